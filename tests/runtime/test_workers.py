"""The worker backend against real party_link workers (a byte-summing handler, no model): parallel calls, one
deadline per round, unreachable parties, oversized replies, and the orphan watchdog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from mpctf.runtime import party_link
from mpctf.runtime.workers import WorkerBackend

KEY = b"k" * 32
HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}


def _argv(folder: Path, **kwargs: str) -> list[str]:
    party_link.write_authkey(folder / "authkey", KEY)
    return party_link.command(
        "flower_fixtures:make_sum_handler",
        {"party": "p", **kwargs},
        authkey_file=folder / "authkey",
        ready_file=folder / "ready.json",
    )


def _wait_ready(folder: Path) -> str:
    deadline = time.monotonic() + 30
    while not (folder / "ready.json").exists():
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.05)
    return str(json.loads((folder / "ready.json").read_text())["address"])


def start_worker(folder: Path, **kwargs: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        _argv(folder, **kwargs), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, _wait_ready(folder)


def test_round_calls_parties_together_and_drops_the_late_one(tmp_path: Path) -> None:
    procs = []
    roster = {}
    for name, delay in (("fast", "0"), ("slow", "1.5"), ("late", "30")):
        (tmp_path / name).mkdir()
        proc, address = start_worker(tmp_path / name, party=name, delay_s=delay)
        procs.append(proc)
        roster[name] = (address, KEY)
    try:
        backend = WorkerBackend(lambda: dict(roster))
        assert backend.party_names() == ["fast", "late", "slow"]
        began = time.monotonic()
        tasks = {p: b"\x02" for p in roster if p != "slow"} | {"slow": lambda: b"\x02", "gone": b"\x01"}
        replies = {r.party: r for r in backend.train_round(tasks, timeout_s=4)}
        elapsed = time.monotonic() - began
        assert 4 <= elapsed < 10  # the deadline, not the late party's 30 s
        assert replies["fast"].payload == b"fast:2" and replies["slow"].payload == b"slow:2"
        assert replies["slow"].seconds < 4  # the parties ran at the same time
        assert replies["late"].payload is None and replies["late"].error == "no reply within 4 s"
        assert replies["gone"].error == "party 'gone' is not connected"
        # a task given as bytes or built by the backend: its size is what reached the party, nothing when unsent
        assert [replies[p].sent_bytes for p in ("fast", "slow", "late", "gone")] == [1, 1, 1, 0]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_dead_worker_and_oversized_reply_are_party_errors(tmp_path: Path) -> None:
    proc, address = start_worker(tmp_path)
    try:
        backend = WorkerBackend(lambda: {"p": (address, KEY)}, max_reply_bytes=4)
        backend.party_names()
        (reply,) = backend.train_round({"p": b"\x09" * 9}, timeout_s=10)  # "p:81" fits in 4 bytes
        assert reply.payload == b"p:81"
        (reply,) = backend.train_round({"p": b"\x09" * 20}, timeout_s=10)  # "p:180" does not
        assert reply.payload is None and "larger than 4 bytes" in reply.error
    finally:
        proc.kill()
        proc.wait()
    (reply,) = backend.train_round({"p": b"\x01"}, timeout_s=10)
    assert reply.payload is None and "ConnectionRefusedError" in reply.error


def test_worker_exits_when_its_launcher_is_killed(tmp_path: Path) -> None:
    # A launcher (this little script) starts a worker in a new session, reports its pid, then is killed.
    argv = _argv(tmp_path)
    script = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen({argv!r}, start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    worker = psutil.Process(int(launcher.stdout.readline()))
    _wait_ready(tmp_path)
    launcher.kill()
    launcher.wait()
    worker.wait(timeout=10)  # psutil.TimeoutExpired if it outlived its launcher
