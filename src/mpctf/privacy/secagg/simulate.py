"""One whole secure-aggregation round in memory: the reference for wiring it into a runtime, and the
benchmark.

Every message goes through :mod:`~mpctf.privacy.secagg.wire` as a real runtime would send it, so the byte
counts are what travels. Dropouts are simulated by leaving a party's reply out of an exchange.
"""

from __future__ import annotations

import time
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
    """The decoded sum, who is in it, and per exchange the bytes moved (up + down, all parties) and the time
    spent (all parties one after the other, plus the server)."""

    total: NamedTensors
    survivors: list[str]
    bytes_per_stage: dict[str, int] = field(default_factory=dict)
    seconds_per_stage: dict[str, float] = field(default_factory=dict)


class _Meter:
    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._stage = ""
        self._start = 0.0

    def stage(self, name: str) -> None:
        now = time.perf_counter()
        if self._stage:
            self.seconds[self._stage] = now - self._start
        self._stage, self._start = name, now

    def send(self, message: dict[str, Any], copies: int = 1) -> dict[str, Any]:
        payload = wire.dumps(message)
        self.bytes[self._stage] = self.bytes.get(self._stage, 0) + len(payload) * copies
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
    meter = _Meter()
    parties = {name: SecAggParty(name, params, round_num) for name in sorted(updates)}
    server = SecAggServer(params, round_num)
    meter.stage("advertise")
    roster = server.collect_keys([meter.send(p.advertise_keys()) for p in parties.values()])
    roster = meter.send(roster, copies=len(parties))
    meter.stage("share")
    alive = [n for n in parties if n not in drop_before_shares]
    inboxes = server.route_shares([meter.send(parties[n].share_keys(roster)) for n in alive])
    meter.stage("masked_input")
    alive = [n for n in alive if n not in drop_before_masked]
    masked = [meter.send(parties[n].masked_input(meter.send(inboxes[n]), updates[n])) for n in alive]
    request = server.collect_masked(masked)
    meter.stage("unmask")
    alive = [n for n in alive if n not in drop_before_unmask]
    request = meter.send(request, copies=len(alive))
    total = server.unmask([meter.send(parties[n].unmask(request)) for n in alive])
    meter.stage("")
    return SecAggRun(total, server.survivors, meter.bytes, meter.seconds)
