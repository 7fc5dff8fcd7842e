"""FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks", MLSys).

Update rule: each party minimises ``F_k(w) + μ/2 · ‖w − x‖²`` locally (``x`` the global state it received);
the server aggregates as FedAvg, ``x ← x + Σ_k w_k Δ_k / Σ_k w_k``. The proximal term keeps local models near
the global one when parties' data differ. Exchanged: as FedAvg, plus ``mu`` in the instructions.
"""

from __future__ import annotations

from typing import Any

import torch

from mpctf.aggregation.base import STRATEGIES, PartyHooks
from mpctf.aggregation.fedavg import FedAvg, FedAvgParams
from mpctf.aggregation.layout import laid_out_like
from mpctf.aggregation.params import NonNegative
from mpctf.messages import NamedTensors


class FedProxParams(FedAvgParams):
    mu: NonNegative = 0.01


class ProximalHooks(PartyHooks):
    """Adds ``μ/2 · Σ_name ‖p − x‖²`` over the trainable tensors to the party's loss."""

    def __init__(self, mu: float, global_state: NamedTensors) -> None:
        self.mu = mu
        self._global = global_state
        self._anchors: NamedTensors = {}

    def extra_loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor | None:
        if self.mu == 0.0 or not params:
            return None
        terms = [(p.float() - self._anchor(name, p)).pow(2).sum() for name, p in params.items()]
        return 0.5 * self.mu * sum(terms[1:], terms[0])

    def _anchor(self, name: str, param: torch.Tensor) -> torch.Tensor:
        # The global state arrives on the CPU; copy each tensor to the parameter's device once per round.
        if name not in self._anchors:
            if name not in self._global:
                raise ValueError(f"fedprox: trainable tensor {name!r} is not in the global state")
            self._anchors[name] = laid_out_like(self._global[name], param, torch.float32)
        return self._anchors[name]


@STRATEGIES.register("fedprox")
class FedProx(FedAvg):
    Params = FedProxParams
    params: FedProxParams

    def party_instructions(self) -> dict[str, Any]:
        return {"mu": self.params.mu}

    @classmethod
    def party_hooks(
        cls,
        instructions: dict[str, Any],
        payload: NamedTensors,
        party: str,
        global_state: NamedTensors,
        party_state: dict[str, Any],
    ) -> PartyHooks:
        return ProximalHooks(float(instructions["mu"]), global_state)
