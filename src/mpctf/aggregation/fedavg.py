"""FedAvg (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data").

Update rule: ``x ← x + Σ_k w_k Δ_k / Σ_k w_k`` with ``Δ_k = x_k − x`` and ``w_k`` the party's number of samples
(or tokens, or 1 for a uniform average). Kept as a running sum: O(model) server memory.
"""

from __future__ import annotations

from typing import Literal

from mpctf.aggregation.base import STRATEGIES, Strategy, StrategyParams, weighted_sum_into
from mpctf.messages import NamedTensors, Update


class FedAvgParams(StrategyParams):
    weight: Literal["samples", "tokens", "uniform"] = "samples"


def update_weight(update: Update, weight: str) -> float:
    """The aggregation weight of one update under the ``weight`` rule."""
    if weight == "samples":
        return float(update.num_samples)
    if weight == "tokens":
        return float(update.num_tokens)
    return 1.0


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    Params = FedAvgParams
    params: FedAvgParams

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        self._global = global_state
        self._sum: NamedTensors | None = None
        self._total = 0.0

    def accumulate(self, update: Update) -> None:
        w = update_weight(update, self.params.weight)
        self._sum = weighted_sum_into(self._sum, update.tensors, w)
        self._total += w

    def mean_delta(self) -> NamedTensors:
        """The weighted mean of this round's deltas (used by FedAvg and by server optimizers built on it)."""
        if self._sum is None or self._total <= 0:
            raise RuntimeError("finalize() called before any update was accumulated")
        return {k: v / self._total for k, v in self._sum.items()}

    def finalize(self) -> NamedTensors:
        delta = self.mean_delta()
        return {k: (g.to(delta[k].dtype) + delta[k]).to(g.dtype) for k, g in self._global.items()}
