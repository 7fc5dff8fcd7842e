"""FlexLoRA (Bai et al., 2024, "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and
Client Resources", NeurIPS).

Update rule: aggregate the full weight change, ``ΔW = Σ_k w_k s_k B_k A_k / Σ_k w_k`` (``B_k``, ``A_k`` the
party's trained factors, ``s_k = α_k / r_k``), then redistribute it by truncated SVD:
``ΔW ≈ U_R Σ_R V_Rᵀ`` with ``A ← V_Rᵀ``, ``B ← U_R Σ_R`` at the server rank ``R``; party ``k`` receives the
first ``r_k`` slots, ``A[:r_k]`` and ``B[:, :r_k] / s_k``, which is exactly the best rank-``r_k``
approximation of ``ΔW`` (singular values are sorted). Other tensors as FedAvg. The SVD is computed from the
stacked factors (rank ``Σ r_k``) by QR, never forming the ``out × in`` matrix; the stack is
O(Σ_k r_k (in + out)) per module, so the strategy buffers (the LoRA part of) every update. Putting ``Σ`` in
``B`` keeps the rows of ``A`` orthonormal, so no slot is ever dead.

Server holds: rank-``R`` factors, ``R = server_rank`` or the largest party rank (a PEFT adapter with
``r = lora_alpha = R``); exact when ``R ≥ rank(ΔW)``, the best rank-``R`` approximation otherwise.
Each party receives: its ``r_k`` leading slots in its own scale. Exchanged: those factors down, deltas up.
"""

from __future__ import annotations

from collections.abc import Mapping

from mpctf.aggregation.base import STRATEGIES, PartySpec
from mpctf.aggregation.fedavg import FedAvg, FedAvgParams, update_weight
from mpctf.aggregation.lora import (
    A_SUFFIX,
    B_SUFFIX,
    FactorStack,
    LoraParties,
    best_rank_factors,
    configured,
    party_factors,
    require_server_rank,
    state_for_rank,
)
from mpctf.aggregation.params import PositiveCount
from mpctf.aggregation.validate import validate_update
from mpctf.messages import NamedTensors, Update


class FlexLoRAParams(FedAvgParams):
    server_rank: PositiveCount | None = None


@STRATEGIES.register("flexlora")
class FlexLoRA(FedAvg):
    aggregates_by_mean = False

    folds_lora_scale = True
    Params = FlexLoRAParams
    params: FlexLoRAParams
    buffers_updates = True
    _lora: LoraParties | None = None

    def configure_parties(self, parties: Mapping[str, PartySpec]) -> None:
        lora = LoraParties.from_specs(parties, "flexlora")
        if self.params.server_rank is not None and self.params.server_rank < lora.max_rank:
            raise ValueError(
                f"flexlora: `server_rank` {self.params.server_rank} is below the largest party rank "
                f"{lora.max_rank}"
            )
        self._lora = lora
        super().configure_parties(parties)

    @property
    def server_rank(self) -> int:
        return self.params.server_rank or configured(self._lora, "flexlora").max_rank

    def state_for_party(self, party: str, global_state: NamedTensors) -> NamedTensors:
        rank, scale = configured(self._lora, "flexlora").of(party)
        return state_for_rank(global_state, rank, scale)

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        require_server_rank(global_state, self.server_rank, "flexlora")
        super().begin_round(round_num, global_state)
        self._stack = FactorStack()

    def accumulate(self, update: Update) -> None:
        sent = self.state_for_party(update.party, self._global)
        validate_update(update, sent)
        weight = update_weight(update, self.params.weight)
        factors, rest = party_factors(update, sent, configured(self._lora, "flexlora").of(update.party)[1])
        self._stack.add(factors, weight)
        self._add(rest, weight)

    def finalize(self) -> NamedTensors:
        new = super().finalize()
        for m, (a, b) in self._stack.stacked().items():
            old_a, old_b = self._global[m + A_SUFFIX], self._global[m + B_SUFFIX]
            a_r, b_r = best_rank_factors(a, b, self.server_rank, fallback_a=old_a.float())
            new[m + A_SUFFIX], new[m + B_SUFFIX] = a_r.to(old_a), b_r.to(old_b)
        return new
