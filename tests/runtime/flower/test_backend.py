"""FlowerBackend's discovery and pull loop against a scripted stand-in for Flower's Grid, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from mpctf.errors import FederationError
from mpctf.runtime.flower import protocol, wire
from mpctf.runtime.flower.backend import FlowerBackend

# A node's behaviour: given a message, (seconds until its reply, the reply) or None for never.
Behaviour = Callable[[Message], tuple[float, Message] | None]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Messages can only be built inside a running Flower app, which sets these.
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


class FakeGrid:
    def __init__(self, nodes: dict[int, Behaviour]) -> None:
        self.nodes = nodes
        self.now = 0.0
        self.due: dict[str, tuple[float, Message]] = {}
        self.pushed: list[Message] = []
        self.refuse = False

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: list[Message]) -> list[str]:
        if self.refuse:
            return []
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.pushed.append(msg)
            answer = self.nodes[msg.metadata.dst_node_id](msg)
            if answer is not None:
                self.due[msg.metadata.message_id] = (self.now + answer[0], answer[1])
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        ready = [i for i in message_ids if i in self.due and self.due[i][0] <= self.now]
        return [self.due.pop(i)[1] for i in ready]


def party(name: str, delay: float = 0.0, *, fail: str | None = None, silent: bool = False) -> Behaviour:
    def behave(msg: Message) -> tuple[float, Message] | None:
        if msg.metadata.message_type == protocol.QUERY:
            content = RecordDict({protocol.RECORD_META: ConfigRecord({protocol.META_PARTY: name})})
            return 0.0, Message(content, reply_to=msg)
        if silent:
            return None
        if fail is not None:
            return delay, Message(Error(2, fail), reply_to=msg)
        return delay, Message(wire.payload_content(name.encode() + wire.payload_of(msg), {}), reply_to=msg)

    return behave


def backend_on(grid: FakeGrid, **kwargs: float) -> FlowerBackend:
    return FlowerBackend(grid, clock=lambda: grid.now, sleep=grid.sleep, **kwargs)


def test_discovery_names_parties_sorted() -> None:
    grid = FakeGrid({11: party("zoe"), 12: party("adam")})
    assert backend_on(grid).party_names() == ["adam", "zoe"]


def test_replies_come_in_arrival_order_with_their_seconds() -> None:
    grid = FakeGrid({1: party("slow", 3.0), 2: party("fast", 1.0)})
    backend = backend_on(grid, poll_s=0.5)
    backend.party_names()
    replies = list(backend.train_round({"slow": b"-s", "fast": b"-f"}, timeout_s=10))
    assert [(r.party, r.payload, r.error, r.seconds) for r in replies] == [
        ("fast", b"fast-f", None, 1.0),
        ("slow", b"slow-s", None, 3.0),
    ]


def test_task_message_carries_timeout_ttl_and_round() -> None:
    grid = FakeGrid({1: party("a")})
    backend = backend_on(grid)
    backend.party_names()
    for _ in range(2):
        list(backend.train_round({"a": b"x"}, timeout_s=7))
    task = grid.pushed[-1]
    assert task.metadata.message_type == protocol.TRAIN
    assert task.metadata.ttl == 7
    assert task.metadata.group_id == "2"
    assert wire.meta_of(task)[protocol.META_TIMEOUT_S] == 7.0


def test_silent_party_times_out_while_the_other_replies() -> None:
    grid = FakeGrid({1: party("quiet", silent=True), 2: party("ok", 0.5)})
    backend = backend_on(grid, poll_s=0.5)
    backend.party_names()
    replies = {r.party: r for r in backend.train_round({"quiet": b"", "ok": b""}, timeout_s=2)}
    assert replies["ok"].payload == b"ok"
    assert replies["quiet"].payload is None
    assert replies["quiet"].error == "no reply within 2 s"
    assert replies["quiet"].seconds == 2.0


def test_error_reply_becomes_one_line_error() -> None:
    grid = FakeGrid({1: party("bad", fail="ValueError: boom\n  at line 3")})
    backend = backend_on(grid)
    backend.party_names()
    (reply,) = backend.train_round({"bad": b""}, timeout_s=5)
    assert (reply.payload, reply.error) == (None, "ValueError: boom at line 3")


def test_unknown_party_is_reported_and_the_others_still_run() -> None:
    grid = FakeGrid({1: party("a")})
    backend = backend_on(grid)
    backend.party_names()
    replies = {r.party: r for r in backend.train_round({"a": b"", "ghost": b""}, timeout_s=5)}
    assert replies["a"].payload == b"a"
    assert replies["ghost"].error == "party 'ghost' is not connected"


def test_refused_push_fails_every_party() -> None:
    grid = FakeGrid({1: party("a"), 2: party("b")})
    backend = backend_on(grid)
    backend.party_names()
    grid.refuse = True
    replies = list(backend.train_round({"a": b"", "b": b""}, timeout_s=5))
    assert sorted(r.party for r in replies) == ["a", "b"]
    assert all(r.payload is None and "refused" in (r.error or "") for r in replies)


def test_departed_node_is_forgotten_and_a_restarted_one_takes_over_once_the_old_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = FakeGrid({1: party("a"), 2: party("b")})
    backend = backend_on(grid)
    assert backend.party_names() == ["a", "b"]
    del grid.nodes[2]
    assert backend.party_names() == ["a"]
    grid.nodes[3] = party("a")  # "a" restarted under a new node id while the old one still looks online
    assert backend.party_names() == ["a"]
    assert "node 3 claims to be party 'a', which node 1 holds: refused while node 1 is online" in caplog.text
    asked = len(grid.pushed)
    assert backend.party_names() == ["a"]
    assert len(grid.pushed) == asked  # neither id is asked again
    list(backend.train_round({"a": b""}, timeout_s=5))
    assert grid.pushed[-1].metadata.dst_node_id == 1  # the live holder keeps the name
    del grid.nodes[1]  # the old id finally goes offline
    assert backend.party_names() == ["a"]
    list(backend.train_round({"a": b""}, timeout_s=5))
    assert grid.pushed[-1].metadata.dst_node_id == 3


def train_targets(grid: FakeGrid) -> set[int]:
    return {m.metadata.dst_node_id for m in grid.pushed if m.metadata.message_type == protocol.TRAIN}


def test_without_node_auth_a_second_claimant_never_takes_a_live_partys_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = FakeGrid({1: party("alice"), 2: party("bob")})
    backend = backend_on(grid)
    assert backend.party_names() == ["alice", "bob"]
    grid.nodes[3] = party("bob", fail="impostor")  # a newer node claims bob's name
    assert backend.party_names() == ["alice", "bob"]
    replies = {r.party: r for r in backend.train_round({"alice": b"", "bob": b""}, timeout_s=5)}
    assert replies["bob"].payload == b"bob" and replies["bob"].error is None
    assert train_targets(grid) == {1, 2}
    assert "node 3 claims to be party 'bob', which node 2 holds" in caplog.text


def test_with_node_auth_a_node_is_accepted_only_under_the_name_its_key_was_registered_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = FakeGrid({20: party("bob")})
    backend = backend_on(grid, registered={"alice": 10, "bob": 20})
    assert backend.party_names() == ["bob"]
    # alice's key (node 10) with bob's name, and a node that no registered key explains.
    grid.nodes[10] = party("bob", fail="impostor")
    grid.nodes[99] = party("carol")
    assert backend.party_names() == ["bob"]
    for _ in range(2):
        replies = list(backend.train_round({"bob": b"", "alice": b""}, timeout_s=5))
        assert {(r.party, r.payload, r.error) for r in replies} == {
            ("bob", b"bob", None),
            ("alice", None, "party 'alice' is not connected"),
        }
    assert train_targets(grid) == {20}  # the refused nodes never get a task
    assert (
        "node 10 claims to be party 'bob' but its key is registered for party 'alice': refused, it gets no tasks"
        in caplog.text
    )
    assert "node 99 claims to be party 'carol' but its key is registered for no party" in caplog.text


def test_with_node_auth_a_refused_node_gets_no_name_when_the_rightful_one_leaves() -> None:
    grid = FakeGrid({10: party("bob"), 20: party("bob")})
    backend = backend_on(grid, registered={"alice": 10, "bob": 20})
    assert backend.party_names() == ["bob"]
    del grid.nodes[20]  # the real bob goes offline
    assert backend.party_names() == []
    grid.nodes[20] = party("bob")  # and comes back: same key, same node id
    assert backend.party_names() == ["bob"]
    list(backend.train_round({"bob": b""}, timeout_s=5))
    assert train_targets(grid) == {20}


def test_node_that_does_not_answer_discovery_is_left_out() -> None:
    def mute(msg: Message) -> None:
        return None

    grid = FakeGrid({1: party("a"), 2: mute})
    assert backend_on(grid, discovery_timeout_s=3).party_names() == ["a"]


def test_wait_for_parties_gives_up_with_a_federation_error() -> None:
    grid = FakeGrid({1: party("a")})
    backend = backend_on(grid)
    assert backend.wait_for_parties(1, timeout_s=5) == ["a"]
    with pytest.raises(FederationError, match=r"only 1 of 2 parties connected within 5 s: \['a'\]"):
        backend.wait_for_parties(2, timeout_s=5)


def test_each_task_is_built_just_before_its_own_push_and_its_size_reported() -> None:
    grid = FakeGrid({1: party("a"), 2: party("b"), 3: party("c")})
    backend = backend_on(grid)
    backend.party_names()
    events: list[str] = []
    push = grid.push_messages

    def push_logged(messages: list[Message]) -> list[str]:
        events.append(f"push {len(messages)}")
        return push(messages)

    grid.push_messages = push_logged  # type: ignore[method-assign]

    def task(name: str, size: int) -> Callable[[], bytes]:
        def build() -> bytes:
            events.append(f"build {name}")
            return bytes(size)

        return build

    replies = {
        r.party: r
        for r in backend.train_round({"a": task("a", 10), "b": task("b", 20), "ghost": task("ghost", 5)}, 5)
    }
    # One message per push, each built right before it: the round never holds two serialized tasks.
    assert events == ["build a", "push 1", "build b", "push 1"]
    assert replies["a"].sent_bytes == 10 and replies["a"].payload == b"a" + bytes(10)
    assert replies["b"].sent_bytes == 20
    assert replies["ghost"].sent_bytes == 0  # never built, never sent
