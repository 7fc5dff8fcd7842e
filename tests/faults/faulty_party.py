"""A party handler that misbehaves on purpose, for the fault tests (imported by real worker processes).

``MPCTF_TEST_FAULTS`` (JSON) maps ``party → {round: fault}``; every other request is served by the real party
worker. Before a faulty round the handler touches ``MPCTF_TEST_MARKERS/PARTY-ROUND`` so a test knows the party is
inside that round. Faults:

- ``hang``: never answer (sleep for an hour); ``sleep:N``: answer N seconds late; ``wait:NAME``: answer once
  the test has touched ``MPCTF_TEST_MARKERS/NAME`` (at most 5 minutes late);
- ``garbage``: bytes that are no message; ``oversized:N``: N bytes of zeros;
- ``impersonate``: a real update that claims to come from ``alice``;
- ``bad_header``: valid tensors under a header with no ``num_samples``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mpctf.messages import RoundTask, Update, pack
from mpctf.party.worker import make_handler as real_handler
from mpctf.runtime.base import PartyHandler


def make_handler(config: str, party: str, threads: str | None = None) -> PartyHandler:
    inner = real_handler(config, party, threads)
    faults = json.loads(os.environ.get("MPCTF_TEST_FAULTS", "{}")).get(party, {})
    markers = Path(os.environ.get("MPCTF_TEST_MARKERS", "."))

    def handle(payload: bytes) -> bytes:
        task = RoundTask.from_bytes(payload)
        fault = faults.get(str(task.round)) if task.instructions.get("op") == "train" else None
        if fault is None:
            return inner(payload)
        (markers / f"{party}-{task.round}").touch()
        kind, _, arg = fault.partition(":")
        if kind == "hang":
            time.sleep(3600)
        if kind == "sleep":
            time.sleep(float(arg))
            return inner(payload)
        if kind == "wait":
            deadline = time.monotonic() + 300
            while not (markers / arg).exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            return inner(payload)
        if kind == "garbage":
            return b"\x13not a safetensors message" * 10
        if kind == "oversized":
            return bytes(int(arg))
        update = Update.from_bytes(inner(payload))
        if kind == "impersonate":
            update.party = "alice"
            return update.to_bytes()
        if kind == "bad_header":
            return pack(update.tensors, {"kind": "update", "party": party, "round": task.round})
        raise ValueError(f"unknown fault {fault!r}")

    return handle
