"""A party handler and drivers for the Flower end-to-end tests, imported by real worker and ServerApp processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mpctf.errors import DataError
from mpctf.runtime.base import Backend, PartyHandler


def make_sum_handler(party: str, crash_on_call: str = "0", delay_s: str = "0") -> PartyHandler:
    """Replies ``party:sum-of-bytes`` after ``delay_s``; ``b"raise"`` raises; call number ``crash_on_call`` exits."""
    calls = 0

    def handle(payload: bytes) -> bytes:
        nonlocal calls
        calls += 1
        time.sleep(float(delay_s))
        if calls == int(crash_on_call):
            os._exit(3)  # the worker dies in the middle of a task
        if payload == b"raise":
            raise ValueError(f"{party} was asked to fail\nsecond line")
        return f"{party}:{sum(payload)}".encode()

    return handle


def record_rounds(backend: Backend, settings: dict[str, str]) -> None:
    """Run ``rounds`` rounds (party i gets i+1 bytes of value r in round r), write every reply to ``out``.

    Parties are looked up again before each round. Optional: ``round_1_done``, a file touched after round 1;
    ``nodes_before_round_2``, how many online nodes (accepted or not) to wait for before round 2.
    """
    parties, replies = [], []
    for r in range(1, int(settings["rounds"]) + 1):
        if r == 2 and "nodes_before_round_2" in settings:
            _wait_for_nodes(backend, int(settings["nodes_before_round_2"]), float(settings["timeout_s"]))
        parties = backend.party_names()
        tasks = {p: bytes([r]) * (i + 1) for i, p in enumerate(parties)}
        for reply in backend.train_round(tasks, float(settings["timeout_s"])):
            replies.append(
                {
                    "round": r,
                    "party": reply.party,
                    "error": reply.error,
                    "seconds": reply.seconds,
                    "payload": reply.payload.decode() if reply.payload is not None else None,
                }
            )
        if r == 1 and "round_1_done" in settings:
            Path(settings["round_1_done"]).touch()
    Path(settings["out"]).write_text(json.dumps({"parties": parties, "replies": replies}))
    if settings.get("then_fail"):
        raise DataError(settings["then_fail"])


def _wait_for_nodes(backend: Backend, nodes: int, timeout_s: float) -> None:
    # Nodes the backend refuses never show in party_names(): count them on the Flower grid itself.
    grid = backend._grid  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while len(grid.get_node_ids()) < nodes and time.monotonic() < deadline:
        time.sleep(0.5)
