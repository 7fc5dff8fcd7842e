"""The in-process backend: every party is a handler in this process, run one after another.

For tests and single-machine experiments. It shares the round loop, the party worker and the wire format with
the Flower backend, so the same bytes are counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from mpctf.runtime.base import Backend, PartyHandler, PartyReply


class LocalBackend(Backend):
    def __init__(self, handlers: dict[str, PartyHandler], *, offline: set[str] | None = None) -> None:
        self.handlers = handlers
        #: Parties treated as unreachable (tests of dropouts set this).
        self.offline = offline if offline is not None else set()

    def party_names(self) -> list[str]:
        return sorted(set(self.handlers) - self.offline)

    def train_round(self, tasks: dict[str, bytes], timeout_s: float) -> Iterator[PartyReply]:
        for party in sorted(tasks):
            start = time.perf_counter()
            try:
                payload = self.handlers[party](tasks[party])
            except Exception as exc:  # a failing party must not stop the round; the loop records why
                yield PartyReply(
                    party, None, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start
                )
                continue
            elapsed = time.perf_counter() - start
            if elapsed > timeout_s:
                yield PartyReply(party, None, error=f"no reply within {timeout_s:g} s", seconds=elapsed)
            else:
                yield PartyReply(party, payload, seconds=elapsed)
