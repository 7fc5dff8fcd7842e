"""A group of child processes that is always torn down together, whatever ends the launch.

Each child starts in its own session, so it leads a process group holding everything it spawns (Flower's
SuperNode starts a SuperExec that starts ClientApps; a party worker may start torchrun ranks). Stopping sends
SIGTERM to every group at once, waits up to a grace period, then sends SIGKILL to whatever is left: signalling
only the leader would leave its children running (SIGTERM to a SuperNode alone leaves its SuperExec alive for
10-25 s).

Use it as a context manager inside :func:`signals_raise`: success, an exception, Ctrl-C and SIGTERM all leave
the ``with`` block through :meth:`ProcessGroup.stop_all`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import psutil

from mpctf.errors import Interrupted, LaunchError

#: How long to wait for killed processes to disappear (their orphans are reaped by init).
_KILL_WAIT_S = 5.0


@dataclass
class Child:
    """One started process: its name, log file, and how it was started (for :meth:`ProcessGroup.restart`)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str]
    env: dict[str, str] | None
    cwd: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid


class ProcessGroup:
    """Starts named processes, each logging to ``LOG_DIR/NAME.log``, and stops them all together."""

    def __init__(self, log_dir: Path, *, grace_s: float = 5.0) -> None:
        self.log_dir = log_dir
        self.grace_s = grace_s
        self._children: dict[str, Child] = {}  # the current process of each name
        self._started: list[Child] = []  # every process ever started, restarted ones included
        self._stopped: set[int] = set()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Child:
        """Start ``argv`` in a new session, stdout and stderr appended to its log; ``LaunchError`` if it can't."""
        if name in self._children:
            raise ValueError(f"a process named {name!r} was already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        child_env = dict(env) if env is not None else None
        with log_path.open("ab") as log:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise LaunchError(f"could not start {name} ({argv[0]}): {exc}") from None
        child = Child(name, popen, log_path, list(argv), child_env, cwd)
        self._children[name] = child
        self._started.append(child)
        return child

    def restart(self, name: str) -> Child:
        """Start an ended child again, same command, same log; what it spawned is still stopped at the end."""
        old = self._children[name]
        if old.popen.poll() is None:
            raise ValueError(f"{name} is still running")
        del self._children[name]
        return self.start(name, old.argv, env=old.env, cwd=old.cwd)

    def children(self) -> list[Child]:
        return list(self._children.values())

    def exited(self) -> dict[str, int]:
        """Exit codes of the children that have ended, by name."""
        return {c.name: code for c in self._children.values() if (code := c.popen.poll()) is not None}

    def check(self, names: Collection[str] | None = None) -> None:
        """Raise ``LaunchError`` naming the first child (of ``names``, or any) that has ended, with its log's end."""
        for child in self._children.values():
            if (names is None or child.name in names) and (code := child.popen.poll()) is not None:
                raise LaunchError(describe_exit(child, code))

    def stop_all(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after the grace period; safe to call twice."""
        with _signals_ignored():
            # A group already stopped is never signalled again: its id may by now belong to another process.
            groups = [c.pid for c in self._started if c.pid not in self._stopped]
            for pgid in groups:
                _signal_group(pgid, signal.SIGTERM)
            self._wait_empty(groups, self.grace_s)
            for pgid in groups:
                _signal_group(pgid, signal.SIGKILL)
            self._wait_empty(groups, _KILL_WAIT_S)  # SIGKILL is asynchronous: return once they are gone
            for child in self._started:
                child.popen.wait()
            self._stopped.update(groups)

    def _wait_empty(self, groups: list[int], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(self._group_alive(pgid) for pgid in groups):
            time.sleep(0.05)

    def _group_alive(self, pgid: int) -> bool:
        for child in self._started:
            child.popen.poll()  # reap our own children, or their zombies would keep the group alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _has_live_member(pgid)


def _has_live_member(pgid: int) -> bool:
    # Orphaned members that already died stay in the group as zombies until init reaps them, which can take
    # a second or two: they hold nothing, so they do not count.
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
    return False


def describe_exit(child: Child, code: int, lines: int = 3) -> str:
    """One line: which process ended, how, and the last lines of its log."""
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"{child.name} {how}; log {child.log_path}: {tail(child.log_path, lines) or '(empty)'}"


def tail(path: Path, lines: int = 3) -> str:
    """The last non-empty ``lines`` of a text file, joined with `` | ``."""
    kept = [line.strip() for line in read_end(path).splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def read_end(path: Path, max_bytes: int = 8192) -> str:
    """The last ``max_bytes`` of a log file as text; empty if it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    # A second Ctrl-C during teardown must not abandon the processes half-stopped.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM, SIGHUP and Ctrl-C into :class:`~mpctf.errors.Interrupted` inside the block.

    Raising unwinds every ``with ProcessGroup`` on the way out, so the children are stopped. Outside the main
    thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}; all processes were stopped")

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, interrupt) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
