"""FedIT (Zhang et al., 2024, "Towards Building the Federated GPT: Federated Instruction Tuning", ICASSP).

Update rule: FedAvg applied to the LoRA factors themselves, ``A ← A + Σ_k w_k ΔA_k / Σ w``, ``B ← B + Σ_k w_k
ΔB_k / Σ w`` (and to any other trainable tensor). Every party must have the same rank and alpha, so the scale
``alpha / r`` is common and averaging factors is consistent; note the mean of the products ``B_k A_k`` is not
the product of the means (FLoRA's and FlexLoRA's point). Server holds: the shared-rank adapter. Each party
receives: the same adapter. Exchanged: as FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping

from mpctf.aggregation.base import STRATEGIES, PartySpec
from mpctf.aggregation.fedavg import FedAvg
from mpctf.aggregation.lora import lora_modules, require_homogeneous
from mpctf.messages import NamedTensors


@STRATEGIES.register("fedit")
class FedIT(FedAvg):
    def configure_parties(self, parties: Mapping[str, PartySpec]) -> None:
        require_homogeneous(parties, "fedit")
        super().configure_parties(parties)

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        if not lora_modules(global_state):
            raise ValueError("fedit averages LoRA adapters, but the global state has no lora_A/lora_B pair")
        super().begin_round(round_num, global_state)
