"""One whole secure-aggregation round in memory: the reference for wiring it into a runtime, and the
benchmark.

Every message goes through :mod:`~mpctf.privacy.secagg.wire` as a real runtime would send it, so the byte
counts are what travels. Dropouts are simulated by leaving a party's reply out of an exchange.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from mpctf.messages import NamedTensors
from mpctf.privacy.secagg import wire
from mpctf.privacy.secagg.params import SecAggParams
from mpctf.privacy.secagg.party import SecAggParty
from mpctf.privacy.secagg.server import SecAggServer


@dataclass
class SecAggRun:
    """The decoded sum, who is in it, and the bytes each exchange moved (uplink + downlink, all parties)."""

    total: NamedTensors
    survivors: list[str]
    bytes_per_stage: dict[str, int] = field(default_factory=dict)


def _send(message: dict[str, Any], stage: str, run_bytes: dict[str, int]) -> dict[str, Any]:
    payload = wire.dumps(message)
    run_bytes[stage] = run_bytes.get(stage, 0) + len(payload)
    return wire.loads(payload)


def secure_sum(
    updates: dict[str, NamedTensors],
    params: SecAggParams,
    *,
    round_num: int = 0,
    drop_before_shares: Collection[str] = (),
    drop_before_masked: Collection[str] = (),
    drop_before_unmask: Collection[str] = (),
) -> SecAggRun:
    """Run the four exchanges for ``updates`` (one per party name) and return the server's result."""
    sent: dict[str, int] = {}
    parties = {name: SecAggParty(name, params, round_num) for name in sorted(updates)}
    server = SecAggServer(params, round_num)
    roster = server.collect_keys([_send(p.advertise_keys(), "advertise", sent) for p in parties.values()])
    alive = [n for n in parties if n not in drop_before_shares]
    roster_bytes = wire.dumps(roster)
    sent["advertise"] += len(roster_bytes) * len(parties)
    inboxes = server.route_shares(
        [_send(parties[n].share_keys(wire.loads(roster_bytes)), "share", sent) for n in alive]
    )
    alive = [n for n in alive if n not in drop_before_masked]
    masked = [
        _send(parties[n].masked_input(_send(inboxes[n], "share", sent), updates[n]), "masked_input", sent)
        for n in alive
    ]
    request = server.collect_masked(masked)
    alive = [n for n in alive if n not in drop_before_unmask]
    replies = [_send(parties[n].unmask(_send(request, "unmask", sent)), "unmask", sent) for n in alive]
    return SecAggRun(total=server.unmask(replies), survivors=server.survivors, bytes_per_stage=sent)
