"""HetLoRA-style zero-padding (Cho et al., 2024, "Heterogeneous LoRA for Federated Fine-tuning of On-Device
Foundation Models", EMNLP).

Update rule: the server holds factors at the largest party rank ``R``, scale folded in (``ΔW = B A``). Party
``k`` receives the first ``r_k`` rank slots (``A[:r_k]``, ``B[:, :r_k] / s_k``). Its trained factors, scale
folded back (``A_k``, ``s_k B_k``), are zero-padded to rank ``R`` and averaged:
``A ← Σ_k w_k pad_R(A_k) / Σ w``, ``B ← Σ_k w_k pad_R(s_k B_k) / Σ w`` (other tensors as FedAvg). Slots above
``r_k`` count as zeros for party ``k``, so high slots shrink towards 0 in proportion to the weight of parties
that do not hold them, as in the paper. Kept as a running sum of ``pad_R(local_k) − global``: O(model)
memory. Not implemented from the paper: sparsity-weighted aggregation and the parties' rank self-pruning.

Server holds: rank-``R`` factors (a PEFT adapter with ``r = lora_alpha = R``). Each party receives: its
``r_k`` leading slots in its own scale. Exchanged: those factors down, their deltas up.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpctf.aggregation.base import STRATEGIES, PartySpec
from mpctf.aggregation.fedavg import FedAvg, update_weight
from mpctf.aggregation.lora import (
    A_SUFFIX,
    B_SUFFIX,
    LoraParties,
    configured,
    party_factors,
    require_server_rank,
    state_for_rank,
    zero_pad,
)
from mpctf.aggregation.validate import validate_update
from mpctf.messages import NamedTensors, Update


@STRATEGIES.register("hetlora")
class HetLoRA(FedAvg):
    aggregates_by_mean = False

    folds_lora_scale = True
    _lora: LoraParties | None = None

    def configure_parties(self, parties: Mapping[str, PartySpec]) -> None:
        self._lora = LoraParties.from_specs(parties, "hetlora")
        super().configure_parties(parties)

    def state_for_party(self, party: str, global_state: NamedTensors) -> NamedTensors:
        rank, scale = configured(self._lora, "hetlora").of(party)
        return state_for_rank(global_state, rank, scale)

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        require_server_rank(global_state, configured(self._lora, "hetlora").max_rank, "hetlora")
        super().begin_round(round_num, global_state)

    def accumulate(self, update: Update) -> None:
        sent = self.state_for_party(update.party, self._global)
        validate_update(update, sent)
        weight = update_weight(update, self.params.weight)
        factors, server_delta = party_factors(
            update, sent, configured(self._lora, "hetlora").of(update.party)[1]
        )
        for m, local in factors.items():
            a, b = zero_pad(local, self._global[m + A_SUFFIX].shape[0])
            server_delta[m + A_SUFFIX] = a - self._global[m + A_SUFFIX].to(torch.float32)
            server_delta[m + B_SUFFIX] = b - self._global[m + B_SUFFIX].to(torch.float32)
        self._add(server_delta, weight)
