"""FedAvgM (Hsu, Qi and Brown, 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification"): FedAvg with server momentum.

Update rule: ``Δ̄ = Σ_k w_k Δ_k / Σ_k w_k``; ``v ← β v + Δ̄``; ``x ← x + η v`` (``v`` starts at 0; with
``β = 0, η = 1`` this is FedAvg). Server state: the momentum ``v``. Exchanged: as FedAvg.
"""

from __future__ import annotations

from typing import Any

from mpctf.aggregation.base import STRATEGIES
from mpctf.aggregation.fedavg import FedAvg, FedAvgParams
from mpctf.aggregation.ops import apply_delta, clone_state, require_same_keys
from mpctf.aggregation.params import Decay, Positive
from mpctf.messages import NamedTensors


class FedAvgMParams(FedAvgParams):
    server_lr: Positive = 1.0
    momentum: Decay = 0.9


@STRATEGIES.register("fedavgm")
class FedAvgM(FedAvg):
    Params = FedAvgMParams
    params: FedAvgMParams

    def __init__(self, params: FedAvgMParams | None = None) -> None:
        super().__init__(params)
        self._velocity: NamedTensors | None = None

    def finalize(self) -> NamedTensors:
        delta = self.mean_delta()
        if self._velocity is None:
            self._velocity = delta
        else:
            require_same_keys(self._velocity, delta, "fedavgm's momentum")
            for k, v in self._velocity.items():
                v.mul_(self.params.momentum).add_(delta[k])
        return apply_delta(self._global, self._velocity, scale=self.params.server_lr)

    def state_dict(self) -> dict[str, Any]:
        velocity = None if self._velocity is None else clone_state(self._velocity)
        return {**super().state_dict(), "velocity": velocity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._velocity = None if state["velocity"] is None else clone_state(state["velocity"])
