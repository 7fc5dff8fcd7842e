"""The in-process backend: every party is a handler in this process, run one after another.

For tests and single-machine experiments. It shares the round loop, the party worker and the wire format with
the Flower backend, so the same bytes are counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from mpctf.runtime.base import Backend, PartyHandler, PartyReply, Task, task_bytes


class LocalBackend(Backend):
    def __init__(self, handlers: dict[str, PartyHandler], *, offline: set[str] | None = None) -> None:
        self.handlers = handlers
        #: Parties treated as unreachable (tests of dropouts set this).
        self.offline = offline if offline is not None else set()

    def party_names(self) -> list[str]:
        return sorted(set(self.handlers) - self.offline)

    def train_round(self, tasks: Mapping[str, Task], timeout_s: float) -> Iterator[PartyReply]:
        for party in sorted(tasks):
            start = time.perf_counter()
            request = task_bytes(tasks[party])
            sent = len(request)
            try:
                payload = self.handlers[party](request)
            except Exception as exc:  # a failing party must not stop the round; the loop records why
                yield PartyReply(
                    party, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start, sent
                )
                continue
            elapsed = time.perf_counter() - start
            if elapsed > timeout_s:
                yield PartyReply(party, None, f"no reply within {timeout_s:g} s", elapsed, sent)
            else:
                yield PartyReply(party, payload, None, elapsed, sent)
