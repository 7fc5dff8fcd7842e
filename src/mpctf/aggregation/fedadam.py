"""FedAdam (Reddi et al., 2021, "Adaptive Federated Optimization", ICLR).

Update rule: ``m ← β₁ m + (1 − β₁) Δ̄``; ``v ← β₂ v + (1 − β₂) Δ̄²``; ``x ← x + η m / (√v + τ)``, with ``Δ̄`` the
FedAvg mean delta (see :mod:`mpctf.aggregation.fedopt`). Server state: ``m``, ``v``. Exchanged: as FedAvg.
"""

from __future__ import annotations

import torch

from mpctf.aggregation.base import STRATEGIES
from mpctf.aggregation.fedopt import FedOptBeta2Params, ServerOptimizer


def adam_second_moment(v: torch.Tensor, delta_sq: torch.Tensor, params: FedOptBeta2Params) -> torch.Tensor:
    """``β₂ v + (1 − β₂) Δ̄²``."""
    return v * params.beta_2 + delta_sq * (1.0 - params.beta_2)


@STRATEGIES.register("fedadam")
class FedAdam(ServerOptimizer):
    Params = FedOptBeta2Params
    second_moment = staticmethod(adam_second_moment)
