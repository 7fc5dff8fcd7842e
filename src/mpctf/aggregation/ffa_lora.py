"""FFA-LoRA (Sun et al., 2024, "Improving LoRA in Privacy-preserving Federated Learning", ICLR).

Update rule: ``A`` stays at its initial value everywhere (parties freeze it: ``PartyHooks.trainable`` is false
for ``lora_A``), so ``ΔW_k = s B_k A`` is linear in what is trained and averaging is exact:
``B ← B + Σ_k w_k ΔB_k / Σ_k w_k``; other tensors as FedAvg. Every party must have the same rank and alpha.
Server holds: the adapter with the initial ``A``. Each party receives: the same adapter; its ``ΔA`` is
ignored by the server (it is zero unless a privacy stage added noise to it). Exchanged: as FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mpctf.aggregation.base import STRATEGIES, PartyHooks, PartySpec
from mpctf.aggregation.fedavg import FedAvg, update_weight
from mpctf.aggregation.lora import A_SUFFIX, lora_modules, require_homogeneous
from mpctf.messages import NamedTensors, Update


class FrozenAHooks(PartyHooks):
    """Tells the trainer to leave every ``lora_A`` factor as received."""

    def trainable(self, name: str) -> bool:
        return not name.endswith(A_SUFFIX)


@STRATEGIES.register("ffa_lora")
class FFALoRA(FedAvg):
    def configure_parties(self, parties: Mapping[str, PartySpec]) -> None:
        require_homogeneous(parties, "ffa_lora")
        super().configure_parties(parties)

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        if not lora_modules(global_state):
            raise ValueError("ffa_lora trains LoRA B factors, but the global state has no lora_A/lora_B pair")
        super().begin_round(round_num, global_state)

    def accumulate(self, update: Update) -> None:
        self._check(update)
        trained = {k: v for k, v in update.tensors.items() if not k.endswith(A_SUFFIX)}
        self._add(trained, update_weight(update, self.params.weight))

    @classmethod
    def party_hooks(
        cls,
        instructions: dict[str, Any],
        payload: NamedTensors,
        party: str,
        global_state: NamedTensors,
        party_state: dict[str, Any],
    ) -> PartyHooks:
        return FrozenAHooks()
