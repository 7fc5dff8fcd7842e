"""FedYogi (Reddi et al., 2021, "Adaptive Federated Optimization", ICLR).

Update rule: ``m ← β₁ m + (1 − β₁) Δ̄``; ``v ← v − (1 − β₂) Δ̄² sign(v − Δ̄²)``; ``x ← x + η m / (√v + τ)``,
with ``Δ̄`` the FedAvg mean delta (see :mod:`mpctf.aggregation.fedopt`). Unlike Adam's, ``v`` moves towards
``Δ̄²`` by an additive ``(1 − β₂) Δ̄²``, so one round of small deltas cannot shrink it (and blow up the step)
the way Adam's multiplicative decay can. Server state: ``m``, ``v``. Exchanged: as FedAvg.
"""

from __future__ import annotations

import torch

from mpctf.aggregation.base import STRATEGIES
from mpctf.aggregation.fedopt import FedOptBeta2Params, ServerOptimizer


def yogi_second_moment(v: torch.Tensor, delta_sq: torch.Tensor, params: FedOptBeta2Params) -> torch.Tensor:
    """``v − (1 − β₂) Δ̄² sign(v − Δ̄²)``."""
    return v - (1.0 - params.beta_2) * delta_sq * torch.sign(v - delta_sq)


@STRATEGIES.register("fedyogi")
class FedYogi(ServerOptimizer):
    Params = FedOptBeta2Params
    second_moment = staticmethod(yogi_second_moment)
