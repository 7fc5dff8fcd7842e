"""FLoRA (Wang et al., 2024, "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank
Adaptations", NeurIPS): exact aggregation by stacking, merged into the base weights.

Update rule: each round every party ``k`` starts from a fresh adapter of its own rank ``r_k`` (Kaiming-uniform
``A``, zero ``B``, seeded by the server, so the server knows exactly what was sent) and trains it to ``(A_k,
B_k)``. The server stacks the factors, ``A ← [A_1; …; A_K]`` (rank ``Σ r_k``) and ``B ← [w_1 s_1 B_1 | … |
w_K s_K B_K] / Σ w``, so that ``B A = Σ_k w_k s_k B_k A_k / Σ_k w_k`` exactly, with no cross terms and no
truncation; other tensors as FedAvg.

Merged, not re-projected: the next round sends that stack as the round payload, every party adds ``B A`` into
its frozen base weights (``PartyHooks.merge_into_base``) and trains a new fresh adapter. The model after round
``t`` is ``W₀ + Σ_{τ≤t} B_τ A_τ``: the global state returned by ``finalize`` is round ``t``'s stack (a PEFT
adapter with ``r = lora_alpha = Σ r_k``, scale 1) on a base that holds the earlier rounds' stacks, so the
server must merge each stack into its own base too before it evaluates the next one. A party that misses a
round misses a merge, so flora needs every party in every round and a restarted party cannot rejoin; its hooks
refuse to train on a base that skipped a merge. The stack is O(Σ_k r_k (in + out)) per module, so the strategy
buffers (the LoRA part of) every update.

Server holds: the last stack (and, for evaluation, a base with the earlier ones merged). Each party
receives: a fresh rank-``r_k`` adapter as its state, and the last stack to merge. Exchanged: the fresh adapter
and the stack down (the stack is the round payload), the fresh adapter's deltas up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mpctf.aggregation.base import STRATEGIES, PartyHooks, PartySpec
from mpctf.aggregation.fedavg import FedAvg, FedAvgParams, update_weight
from mpctf.aggregation.lora import (
    A_SUFFIX,
    B_SUFFIX,
    FactorStack,
    LoraParties,
    configured,
    fresh_factors,
    lora_modules,
    party_factors,
    split_lora,
)
from mpctf.aggregation.validate import validate_update
from mpctf.messages import NamedTensors, Update

_MERGED = "flora_merged_round"


class FloraParams(FedAvgParams):
    seed: int = 0


class FloraHooks(PartyHooks):
    """Hands the trainer the previous round's stack to merge, once, and checks no merge was skipped."""

    def __init__(
        self, stack: NamedTensors, round_num: int, first_round: int, party_state: dict[str, Any]
    ) -> None:
        self._stack, self._round, self._first, self._state = stack, round_num, first_round, party_state

    def merge_into_base(self) -> NamedTensors:
        last = self._state.get(_MERGED)
        if last is None and self._round != self._first:
            raise ValueError(
                f"flora: round {self._round} needs this party's base to hold every stack since round "
                f"{self._first}, but it has merged none (flora needs every party in every round)"
            )
        if last is not None and last != self._round - 1:
            raise ValueError(
                f"flora: this party last merged round {last}'s stack, round {self._round} needs "
                f"round {self._round - 1}'s (flora needs every party in every round)"
            )
        self._state[_MERGED] = self._round
        return self._stack


@STRATEGIES.register("flora")
class Flora(FedAvg):
    aggregates_by_mean = False

    Params = FloraParams
    params: FloraParams
    buffers_updates = True
    merges_into_base = True
    _lora: LoraParties | None = None
    _first_round: int | None = None

    def configure_parties(self, parties: Mapping[str, PartySpec]) -> None:
        self._lora = LoraParties.from_specs(parties, "flora")
        super().configure_parties(parties)

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        configured(self._lora, "flora")
        if not lora_modules(global_state):
            raise ValueError("flora stacks LoRA adapters, but the global state has no lora_A/lora_B pair")
        super().begin_round(round_num, global_state)
        self._round = round_num
        if self._first_round is None:
            self._first_round = round_num
        self._stack = FactorStack()

    def state_for_party(self, party: str, global_state: NamedTensors) -> NamedTensors:
        rank, _ = configured(self._lora, "flora").of(party)
        state = dict(global_state)
        for m in lora_modules(global_state):
            a, b = global_state[m + A_SUFFIX], global_state[m + B_SUFFIX]
            seed = f"flora:{self.params.seed}:{self._round}:{party}:{m}"
            state[m + A_SUFFIX], state[m + B_SUFFIX] = fresh_factors(rank, a, b, seed)
        return state

    def round_payload(self) -> NamedTensors:
        return split_lora(self._global)[0]

    def party_instructions(self) -> dict[str, Any]:
        return {"round": self._round, "first_round": self._first_round}

    @classmethod
    def party_hooks(
        cls,
        instructions: dict[str, Any],
        payload: NamedTensors,
        party: str,
        global_state: NamedTensors,
        party_state: dict[str, Any],
    ) -> PartyHooks:
        return FloraHooks(payload, int(instructions["round"]), int(instructions["first_round"]), party_state)

    def accumulate(self, update: Update) -> None:
        sent = self.state_for_party(update.party, self._global)
        validate_update(update, sent)
        weight = update_weight(update, self.params.weight)
        factors, rest = party_factors(update, sent, configured(self._lora, "flora").of(update.party)[1])
        self._stack.add(factors, weight)
        self._add(rest, weight)

    def finalize(self) -> NamedTensors:
        new = super().finalize()
        for m, (a, b) in self._stack.stacked().items():
            new[m + A_SUFFIX] = a.to(self._global[m + A_SUFFIX])
            new[m + B_SUFFIX] = b.to(self._global[m + B_SUFFIX])
        return new

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "first_round": self._first_round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._first_round = state["first_round"]
