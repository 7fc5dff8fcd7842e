"""The worker backend: each party is a long-lived worker process reached with :func:`party_link.call`.

No Flower in between: the server's round loop calls every selected party's worker at once (one thread each) and
yields replies as they arrive. The round has one deadline for all parties: a party that has not answered by then
is reported as timed out and the round goes on without it (its worker may still be busy; its late reply is
dropped). A party whose worker is gone (killed, crashed, restarting) is reported as unreachable.

Which parties exist, and at which address, is asked of ``roster`` before every round, so a launcher that restarts
a dead worker lets that party rejoin the next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from mpctf.runtime.base import Backend, PartyReply, Task, task_bytes
from mpctf.runtime.party_link import call, one_line

log = logging.getLogger("mpctf.workers")

#: ``party → (address, authkey)`` of the workers that are ready now.
Roster = Callable[[], dict[str, tuple[str, bytes]]]


class WorkerBackend(Backend):
    """Reach each party's worker directly; ``max_reply_bytes`` bounds what one reply may hold."""

    def __init__(self, roster: Roster, *, max_reply_bytes: int | None = None) -> None:
        self._roster = roster
        self._max_reply_bytes = max_reply_bytes
        self._known: dict[str, tuple[str, bytes]] = {}

    def party_names(self) -> list[str]:
        self._known = self._roster()
        return sorted(self._known)

    def train_round(self, tasks: Mapping[str, Task], timeout_s: float) -> Iterator[PartyReply]:
        start = time.monotonic()
        deadline = start + timeout_s
        # Not a ``with`` block: leaving it would wait for the threads of stragglers we have stopped waiting for.
        pool = ThreadPoolExecutor(max_workers=max(len(tasks), 1), thread_name_prefix="party-call")
        pending: dict[Future[bytes], str] = {}
        sent: dict[str, int] = {}
        try:
            for party, task in sorted(tasks.items()):
                if party not in self._known:
                    yield PartyReply(party, None, f"party {party!r} is not connected")
                    continue
                address, authkey = self._known[party]
                pending[pool.submit(self._call, address, authkey, task, timeout_s, sent, party)] = party
            while pending:
                done, _ = wait(
                    pending, timeout=max(deadline - time.monotonic(), 0.0), return_when=FIRST_COMPLETED
                )
                if not done:
                    break
                for future in done:
                    party = pending.pop(future)
                    yield self._reply(party, future, time.monotonic() - start, sent.get(party, 0))
            for party in sorted(pending.values()):
                log.warning(
                    "party %r gave no reply within %g s; the round goes on without it", party, timeout_s
                )
                yield PartyReply(
                    party,
                    None,
                    f"no reply within {timeout_s:g} s",
                    time.monotonic() - start,
                    sent.get(party, 0),
                )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _call(
        self, address: str, authkey: bytes, task: Task, timeout_s: float, sent: dict[str, int], party: str
    ) -> bytes:
        # Built in the party's own thread, where it stays until the reply: every party is called at once, so this
        # same-host backend holds one task per party for the round (the Flower backend, one at a time).
        payload = task_bytes(task)
        sent[party] = len(payload)
        return call(address, authkey, payload, timeout_s, max_reply_bytes=self._max_reply_bytes)

    @staticmethod
    def _reply(party: str, future: Future[bytes], seconds: float, sent: int) -> PartyReply:
        try:
            return PartyReply(party, future.result(), None, seconds, sent)
        except ConnectionRefusedError as exc:
            reason = f"its worker is not running ({one_line(exc)})"
        except (EOFError, ConnectionError) as exc:
            reason = f"its worker died during the round ({one_line(exc)})"
        except Exception as exc:  # a handler error, a wrong key, an oversized reply: the party's error
            reason = one_line(exc)
        log.warning("party %r failed this round: %s", party, reason)
        return PartyReply(party, None, reason, seconds, sent)
