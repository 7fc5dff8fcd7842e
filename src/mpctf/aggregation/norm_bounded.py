"""Norm-bounded averaging (Sun et al., 2019, "Can You Really Backdoor Federated Learning?").

Update rule: ``Δ_k ← Δ_k · min(1, M / ‖Δ_k‖)`` (clip each party's whole delta to L2 norm ``M``), then
``x ← x + Σ_k w_k Δ_k / Σ_k w_k``. One update can move the global state by at most ``w_k M / Σ w``. The
clipping needs only the update's own norm, so this stays a running sum (O(model) memory, no buffering).
Exchanged: as FedAvg.
"""

from __future__ import annotations

from mpctf.aggregation.base import STRATEGIES
from mpctf.aggregation.fedavg import FedAvg, FedAvgParams, update_weight
from mpctf.aggregation.params import Positive
from mpctf.messages import Update


class NormBoundedParams(FedAvgParams):
    max_norm: Positive


def clip_factor(norm: float, max_norm: float) -> float:
    """``min(1, M / ‖Δ‖)`` (1 for a zero delta)."""
    return 1.0 if norm <= max_norm else max_norm / norm


@STRATEGIES.register("norm_bounded")
class NormBounded(FedAvg):
    aggregates_by_mean = False

    Params = NormBoundedParams
    params: NormBoundedParams

    def accumulate(self, update: Update) -> None:
        norm = self._check(update)
        weight = update_weight(update, self.params.weight)
        self._add(update.tensors, weight, scale=clip_factor(norm, self.params.max_norm))
