"""The runtime contract: move opaque task bytes to parties and their reply bytes back.

The round loop is written once against :class:`Backend`; ``local`` runs parties in-process, ``flower`` runs them
behind Flower's deployment engine. A backend knows nothing of what the bytes contain.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

#: A party's side of the runtime: takes a serialized request, returns the serialized reply.
PartyHandler = Callable[[bytes], bytes]

#: One party's task: its bytes, or a function that builds them. A backend builds a task only when it sends it and
#: lets go of the bytes once sent, so a round of full-model tasks does not hold one serialized copy per party.
Task = bytes | Callable[[], bytes]


def task_bytes(task: Task) -> bytes:
    """The bytes of ``task``, built now if it is a builder."""
    return task() if callable(task) else task


@dataclass
class PartyReply:
    """One party's answer to one task: ``payload`` on success, ``error`` (one line) on failure or timeout."""

    party: str
    payload: bytes | None
    error: str | None = None
    seconds: float = 0.0
    #: Length of the task delivered to the party; 0 when none was (the party was not connected).
    sent_bytes: int = 0


class Backend(ABC):
    """Delivers one round's tasks and yields replies as they arrive."""

    @abstractmethod
    def party_names(self) -> list[str]:
        """Names of the parties reachable now, sorted."""

    @abstractmethod
    def train_round(self, tasks: Mapping[str, Task], timeout_s: float) -> Iterator[PartyReply]:
        """Send ``tasks[party]`` to each party; yield exactly one reply per party (errors and timeouts included)."""

    def close(self) -> None:  # noqa: B027  (optional hook: most backends hold nothing to release)
        """Release what the backend holds; the loop calls it once at the end."""
