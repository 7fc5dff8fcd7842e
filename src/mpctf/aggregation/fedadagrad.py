"""FedAdagrad (Reddi et al., 2021, "Adaptive Federated Optimization", ICLR).

Update rule: ``m ← β₁ m + (1 − β₁) Δ̄``; ``v ← v + Δ̄²``; ``x ← x + η m / (√v + τ)``, with ``Δ̄`` the FedAvg
mean delta (see :mod:`mpctf.aggregation.fedopt`). Server state: ``m``, ``v``. Exchanged: as FedAvg.
"""

from __future__ import annotations

import torch

from mpctf.aggregation.base import STRATEGIES
from mpctf.aggregation.fedopt import FedOptParams, ServerOptimizer


def adagrad_second_moment(v: torch.Tensor, delta_sq: torch.Tensor, params: FedOptParams) -> torch.Tensor:
    """``v + Δ̄²``."""
    return v + delta_sq


@STRATEGIES.register("fedadagrad")
class FedAdagrad(ServerOptimizer):
    Params = FedOptParams
    second_moment = staticmethod(adagrad_second_moment)
