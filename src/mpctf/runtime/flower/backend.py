"""The Flower backend: the round loop's :class:`Backend` on top of a Flower ``Grid``.

Parties are found by asking every online node for its party name (a ``query`` message, answered by the ClientApp
from its node config). That name is only a claim. With node authentication, ``registered`` maps each party to the
node id Flower gave its public key when the server registered it (Flower keeps that id for the key across SuperNode
restarts), and a node is accepted only under the name its key was registered for. Without authentication a name
belongs to the first node that claims it while that node is online; a later claimant is refused, and takes the
name over once the holder has gone offline (a restarted SuperNode gets a new id; its old id drops out after
Flower's heartbeat patience, at once after a clean stop). A refused node is logged and never gets a task.

A round pushes one ``train`` message per party, one at a time (each task is built just before its push and
released after it, so the ServerApp holds one serialized task however many parties there are), and pulls replies
one at a time every ``poll_s`` seconds, yielding each as soon as it arrives so the server can aggregate (and drop)
it while slower parties still train. (Flower's own ``send_and_receive`` would return only when all replies are
in, and polls every 3 s.) A party whose reply is an error, or who has not answered within ``timeout_s``, yields a
:class:`PartyReply` with ``error`` set.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from mpctf.errors import FederationError
from mpctf.runtime.base import Backend, PartyReply, Task, task_bytes
from mpctf.runtime.flower import protocol, wire

K = TypeVar("K", bound=Hashable)

log = logging.getLogger("mpctf.flower")


class FlowerBackend(Backend):
    """Delivers tasks to parties through Flower's SuperLink and yields their replies as they arrive.

    ``clock`` and ``sleep`` are injectable so that tests can drive the pull loop without waiting.
    """

    def __init__(
        self,
        grid: Grid,
        *,
        poll_s: float = 0.5,
        discovery_timeout_s: float = 60.0,
        registered: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._grid = grid
        self._poll_s = poll_s
        self._discovery_timeout_s = discovery_timeout_s
        self._clock = clock
        self._sleep = sleep
        #: party -> node id of its registered key; None without node authentication.
        self._registered = dict(registered) if registered is not None else None
        self._key_owner = {node: party for party, node in (registered or {}).items()}
        self._claim_of: dict[int, str] = {}  # every node that said its name, accepted or not
        self._node_of: dict[str, int] = {}  # the accepted node of each party
        self._round = 0

    def party_names(self) -> list[str]:
        """Names of the parties whose nodes are online now, sorted (new nodes are asked for their name)."""
        self._discover()
        return sorted(self._node_of)

    def wait_for_parties(self, minimum: int, timeout_s: float) -> list[str]:
        """Block until at least ``minimum`` parties are connected; ``FederationError`` after ``timeout_s``."""
        deadline = self._clock() + timeout_s
        while len(names := self.party_names()) < minimum:
            if self._clock() >= deadline:
                raise FederationError(
                    f"only {len(names)} of {minimum} parties connected within {timeout_s:g} s: {names or 'none'}"
                )
            self._sleep(1.0)
        return names

    def train_round(self, tasks: Mapping[str, Task], timeout_s: float) -> Iterator[PartyReply]:
        """Push every task, then yield one reply per party in the order replies arrive."""
        self._round += 1
        sent: dict[str, int] = {}
        group = str(self._round)

        def message(party: str, node: int) -> Callable[[], Message]:
            def build() -> Message:
                payload = task_bytes(tasks[party])
                sent[party] = len(payload)
                content = wire.payload_content(payload, {protocol.META_TIMEOUT_S: float(timeout_s)})
                return Message(content, node, protocol.TRAIN, ttl=timeout_s, group_id=group)

            return build

        connected = {p: node for p in tasks if (node := self._node_of.get(p)) is not None}
        # pushes now, before any reply is yielded
        exchange = self._exchange([(p, message(p, node)) for p, node in connected.items()], timeout_s)
        for party in tasks.keys() - connected.keys():
            yield PartyReply(party, None, f"party {party!r} is not connected")
        for party, reply, seconds in exchange.replies():
            if isinstance(reply, str):
                yield PartyReply(party, None, reply, seconds, sent.get(party, 0))
            elif (error := wire.error_of(reply)) is not None:
                yield PartyReply(party, None, error, seconds, sent[party])
            else:
                yield PartyReply(party, wire.payload_of(reply), None, seconds, sent[party])
            del reply  # before the next is pulled

    def _discover(self) -> None:
        online = set(self._grid.get_node_ids())
        for node in set(self._claim_of) - online:
            self._forget(node)
        queries = [
            (
                node,
                functools.partial(Message, RecordDict(), node, protocol.QUERY, ttl=self._discovery_timeout_s),
            )
            for node in online - set(self._claim_of)
        ]
        for node, reply, _ in self._exchange(queries, self._discovery_timeout_s).replies():
            error = reply if isinstance(reply, str) else wire.error_of(reply)
            if error is not None:
                log.warning("node %d did not say which party it is: %s", node, error)
                continue
            party = str(reply.content.config_records[protocol.RECORD_META][protocol.META_PARTY])
            self._claim_of[node] = party  # known from now on: not asked again, even if refused
            if self._may_hold(node, party):
                self._node_of[party] = node

    def _may_hold(self, node: int, party: str) -> bool:
        """Whether ``node`` may be ``party`` now; logs why not (the node then gets no task)."""
        if self._registered is not None:
            owner = self._key_owner.get(node)
            if owner == party:
                return True
            registered_for = f"party {owner!r}" if owner is not None else "no party"
            log.warning(
                "node %d claims to be party %r but its key is registered for %s: refused, it gets no tasks",
                node,
                party,
                registered_for,
            )
            return False
        holder = self._node_of.get(party)
        if holder is None or holder == node:
            return True
        log.warning(
            "node %d claims to be party %r, which node %d holds: refused while node %d is online",
            node,
            party,
            holder,
            holder,
        )
        return False

    def _forget(self, node: int) -> None:
        party = self._claim_of.pop(node)
        if self._node_of.get(party) != node:
            return
        del self._node_of[party]
        # Without node authentication, the latest node refused for this name (a restarted SuperNode) takes it.
        waiting = [n for n, p in self._claim_of.items() if p == party]
        if self._registered is None and waiting:
            self._node_of[party] = waiting[-1]
            log.warning("party %r moved from node %d (gone offline) to node %d", party, node, waiting[-1])

    def _exchange(self, messages: list[tuple[K, Callable[[], Message]]], timeout_s: float) -> _Exchange[K]:
        return _Exchange(
            self._grid, messages, timeout_s, clock=self._clock, sleep=self._sleep, poll_s=self._poll_s
        )


class _Exchange(Generic[K]):
    """The pushes of a set of messages (done on construction) and the pulls that collect their replies.

    Each message is built, pushed on its own and dropped before the next is built: a message of a full model is
    large, and Flower keeps its own chunked copy of a message while pushing it.
    """

    def __init__(
        self,
        grid: Grid,
        messages: Iterable[tuple[K, Callable[[], Message]]],
        timeout_s: float,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        poll_s: float,
    ) -> None:
        self._grid, self._timeout_s = grid, timeout_s
        self._clock, self._sleep, self._poll_s = clock, sleep, poll_s
        self._start = clock()
        self._refused: list[K] = []
        self._pending: dict[str, K] = {}
        for key, build in messages:
            ids = list(grid.push_messages([build()]))
            if ids and ids[0] is not None:  # Flower returns no id, or None, when the SuperLink refuses it
                self._pending[ids[0]] = key
            else:
                self._refused.append(key)

    def replies(self) -> Iterator[tuple[K, Message | str, float]]:
        """Yield ``(key, reply or error line, seconds since the push began)`` once per message."""
        for key in self._refused:
            yield key, "the SuperLink refused the message (too large or malformed)", self._elapsed()
        deadline = self._start + self._timeout_s
        pending = self._pending
        while pending:
            # One message per pull, each yielded before the next is pulled: a reply may be a whole model, and
            # Flower assembles every reply of a pull (and its chunks) at once.
            for message_id in list(pending):
                for reply in self._grid.pull_messages([message_id]):
                    key = pending.pop(reply.metadata.reply_to_message_id, None)
                    if key is not None:
                        yield key, reply, self._elapsed()
                    del reply
            if not pending or self._clock() >= deadline:
                break
            self._sleep(min(self._poll_s, max(deadline - self._clock(), 0.0)))
        for key in pending.values():
            yield key, f"no reply within {self._timeout_s:g} s", self._elapsed()

    def _elapsed(self) -> float:
        return self._clock() - self._start
