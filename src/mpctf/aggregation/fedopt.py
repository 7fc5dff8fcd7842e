"""The server-optimizer frame shared by FedAdagrad, FedAdam and FedYogi (Reddi et al., 2021, "Adaptive
Federated Optimization", ICLR, Algorithm 2).

Update rule: the FedAvg mean delta ``Δ̄`` is the pseudo-gradient; ``m ← β₁ m + (1 − β₁) Δ̄``; ``v`` follows the
method's second-moment rule; ``x ← x + η m / (√v + τ)``. Starts from ``m = 0`` and ``v = τ²`` (the paper asks
``v₋₁ ≥ τ²``); no bias correction, as in the paper. Server state: ``m`` and ``v``. Exchanged: as FedAvg.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from mpctf.aggregation.base import Strategy
from mpctf.aggregation.fedavg import FedAvg, FedAvgParams
from mpctf.aggregation.ops import apply_delta, clone_state, require_same_keys, zeros_like_f32
from mpctf.aggregation.params import Decay, Positive
from mpctf.messages import NamedTensors, Update


class FedOptParams(FedAvgParams):
    eta: Positive = 1e-2
    tau: Positive = 1e-3
    beta_1: Decay = 0.9


class FedOptBeta2Params(FedOptParams):
    beta_2: Decay = 0.99


def first_moment(m: torch.Tensor, delta: torch.Tensor, *, beta_1: float) -> torch.Tensor:
    """``β₁ m + (1 − β₁) Δ``."""
    return m * beta_1 + delta * (1.0 - beta_1)


def adaptive_step(m: torch.Tensor, v: torch.Tensor, *, eta: float, tau: float) -> torch.Tensor:
    """``η m / (√v + τ)``."""
    return eta * m / (v.sqrt() + tau)


class ServerOptimizer(Strategy):
    """FedAvg's mean delta followed by one adaptive step; subclasses give the second-moment rule."""

    aggregates_by_mean = True

    Params = FedOptParams
    params: FedOptParams

    def __init__(self, params: FedOptParams | None = None) -> None:
        super().__init__(params)
        self._mean = FedAvg(FedAvgParams(weight=self.params.weight))
        self._m: NamedTensors | None = None
        self._v: NamedTensors | None = None

    @staticmethod
    @abstractmethod
    def second_moment(v: torch.Tensor, delta_sq: torch.Tensor, params: Any) -> torch.Tensor:
        """The method's ``v ← …`` from the previous ``v`` and ``Δ̄²``."""

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        self._mean.begin_round(round_num, global_state)
        self._global = global_state
        if self._m is None or self._v is None:
            self._m = zeros_like_f32(global_state)
            self._v = {k: t.fill_(self.params.tau**2) for k, t in zeros_like_f32(global_state).items()}
        require_same_keys(self._m, global_state, f"{self.registered_name}'s moments")

    def accumulate(self, update: Update) -> None:
        self._mean.accumulate(update)

    def finalize(self) -> NamedTensors:
        delta, p = self._mean.mean_delta(), self.params
        if self._m is None or self._v is None:
            raise RuntimeError("finalize() called before begin_round()")
        # Tensor by tensor, replacing the mean delta by the step as it goes: the server holds m, v, the mean
        # and the new state, never a second full copy of any of them.
        for k, d in delta.items():
            d = d.to(self._m[k].device)  # updates arrive decoded on the CPU; moments live with the state
            self._m[k] = first_moment(self._m[k], d, beta_1=p.beta_1)
            self._v[k] = self.second_moment(self._v[k], d.square(), p)
            delta[k] = adaptive_step(self._m[k], self._v[k], eta=p.eta, tau=p.tau)
        return apply_delta(self._global, delta)

    def state_dict(self) -> dict[str, Any]:
        moments = {"m": self._m, "v": self._v}
        return {
            **super().state_dict(),
            **{k: None if t is None else clone_state(t) for k, t in moments.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._m = None if state["m"] is None else clone_state(state["m"])
        self._v = None if state["v"] is None else clone_state(state["v"])
