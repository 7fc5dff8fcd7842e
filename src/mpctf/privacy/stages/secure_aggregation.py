"""Secure aggregation (SecAgg, SecAgg+) as a privacy stage: the server learns only the sum of the survivors.

Four exchanges a round (``docs/privacy.md``): advertise keys and share them before training (the server sends the
round's ring parameters with the first, so every party encodes alike), the masked update as the training reply,
and the survivors' shares to unmask. The protocol itself is :mod:`mpctf.privacy.secagg`; this module wires it.
"""

from __future__ import annotations

import base64
from typing import Any

from mpctf.errors import UpdateRejected
from mpctf.messages import NamedTensors, RoundTask, Update
from mpctf.privacy import rounds
from mpctf.privacy.secagg.params import SecAggParams
from mpctf.privacy.stages.base import (
    STAGES,
    Exchange,
    MechanismTraits,
    PartyContext,
    PartyStage,
    PrivacyStage,
    RoundState,
    check_hidden_layout,
)

_SERVER = "secure_aggregation.server"
_MASKED = "secure_aggregation.masked"


class SecAggPartyStage(PartyStage):
    """A party's keys and seeds for the round in flight (fresh every round)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._round: Any = None  # SecAggParty of the round in flight

    def protect(self, tensors: NamedTensors, instructions: dict[str, Any], ctx: PartyContext) -> NamedTensors:
        from mpctf.privacy.secagg import wire

        if self._round is None or self._round.round != ctx.task.round:
            raise RuntimeError(f"party {self.name!r}: no secure-aggregation keys for round {ctx.task.round}")
        inbox = wire.loads(base64.b64decode(instructions["inbox"]))
        message = self._round.masked_input(inbox, tensors)
        ctx.metrics["secagg_clamped"] = float(self._round.clamped)
        ctx.header["layout"] = message["layout"]
        return {rounds.MASKED: message["masked"]}

    def handle(self, task: RoundTask) -> bytes:
        from mpctf.privacy.secagg import SecAggParty, wire

        op = task.instructions["op"]
        if op == rounds.SECAGG_ADVERTISE:
            params = SecAggParams.model_validate(task.instructions["secagg"])
            self._round = SecAggParty(self.name, params, task.round)
            return rounds.reply(op, {"message": wire.dumps(self._round.advertise_keys())})
        if self._round is None or self._round.round != task.round:
            raise RuntimeError(f"party {self.name!r}: no secure-aggregation state for round {task.round}")
        method = {rounds.SECAGG_SHARE: "share_keys", rounds.SECAGG_UNMASK: "unmask"}[op]
        answer = getattr(self._round, method)(wire.loads(rounds.request_blobs(task)["message"]))
        if op == rounds.SECAGG_UNMASK:
            self._round = None  # its secrets were dropped by unmask; the next round starts afresh
        return rounds.reply(op, {"message": wire.dumps(answer)})


@STAGES.register("secure_aggregation")
class SecureAggregationStage(PrivacyStage):
    traits = MechanismTraits(
        "secure aggregation", hides_updates=True, exact_on_integer_codes=True, carries_clip_count=True
    )
    order = 20
    ops = frozenset({rounds.SECAGG_ADVERTISE, rounds.SECAGG_SHARE, rounds.SECAGG_UNMASK})
    params: SecAggParams

    @classmethod
    def party_stage(cls, name: str, own: Any | None) -> PartyStage:
        return SecAggPartyStage(name)

    def ring(self, num_parties: int) -> SecAggParams:
        """The round's ring: as configured, or with the precision of the uplink's integer quantiser."""
        bits = self.run.uplink_integer_bits
        return self.params if bits is None else self.params.for_integer_codes(bits, num_parties)

    def least_summed(self, holders: int) -> int:
        """The SecAgg threshold (or min_parties): a dropout never leaves the sum with fewer noise shares."""
        per_secret = holders if self.params.num_neighbours is None else self.params.num_neighbours + 1
        return max(self.run.min_parties, 2, self.params.threshold_for(min(holders, per_secret)))

    def value_range(self) -> float | None:
        return self.params.clip_range

    def begin_round(self, state: RoundState, exchange: Exchange) -> None:
        """Exchanges 1 (advertise keys) and 2 (share keys); each party's inbox goes with its training task."""
        from mpctf.privacy.secagg import SecAggServer, wire

        params = self.ring(len(state.selected))
        state.scratch[_SERVER] = server = SecAggServer(params, state.round)
        state.scratch[_MASKED] = []
        ring = params.model_dump()
        ads = exchange(
            {p: rounds.request(rounds.SECAGG_ADVERTISE, state.round, secagg=ring) for p in state.selected}
        )
        roster = wire.dumps(server.collect_keys([_message(r, rounds.SECAGG_ADVERTISE) for r in ads.values()]))
        shares = exchange(
            {p: rounds.request(rounds.SECAGG_SHARE, state.round, {"message": roster}) for p in ads}
        )
        inboxes = server.route_shares([_message(r, rounds.SECAGG_SHARE) for r in shares.values()])
        state.selected = [p for p in state.selected if p in inboxes]
        for party, box in inboxes.items():
            state.per_party.setdefault(party, {})[self.registered_name] = {
                "inbox": base64.b64encode(wire.dumps(box)).decode()
            }
        state.instructions[self.registered_name] = {}

    def receive(self, state: RoundState, update: Update, reference: NamedTensors) -> bool:
        layout = check_hidden_layout(update, reference, state.extra_coordinates)
        if set(update.tensors) != {rounds.MASKED} or update.tensors[rounds.MASKED].numel() != layout.numel:
            raise UpdateRejected(
                f"party {update.party!r}: expected one masked vector of {layout.numel} values"
            )
        state.scratch[_MASKED].append(
            {
                "party": update.party,
                "round": update.round,
                "masked": update.tensors[rounds.MASKED],
                "layout": layout.to_json(),
            }
        )
        return True

    def finish(self, state: RoundState, total: NamedTensors, exchange: Exchange) -> NamedTensors:
        """Exchange 4: the survivors reveal shares; the server strips the masks and decodes the sum."""
        from mpctf.privacy.secagg import wire

        server = state.scratch[_SERVER]
        request = wire.dumps(server.collect_masked(state.scratch[_MASKED]))
        survivors = sorted(m["party"] for m in state.scratch[_MASKED])
        tasks = {
            p: rounds.request(rounds.SECAGG_UNMASK, state.round, {"message": request}) for p in survivors
        }
        replies = exchange(tasks)
        dropped = sorted(set(state.drawn) - set(survivors))
        if dropped:
            state.metrics["privacy_dropped"] = dropped
        return server.unmask([_message(r, rounds.SECAGG_UNMASK) for r in replies.values()])


def _message(payload: bytes, op: str) -> dict[str, Any]:
    from mpctf.privacy.secagg import wire

    return wire.loads(rounds.read_reply(payload, op)[0]["message"])
