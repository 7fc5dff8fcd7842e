"""Parties that die, hang or send garbage, with real worker processes (backend ``processes``).

Each test runs a tiny federation whose party ``bob`` misbehaves in chosen rounds (see ``faulty_party.py``) and
checks that the server finishes every round with the parties that answered.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from multiprocessing import AuthenticationError
from pathlib import Path
from typing import Any

import pytest

from mpctf.config import load_config
from mpctf.launch.workers import run_processes
from mpctf.report.metrics import Record, read_metrics
from mpctf.runtime import party_link
from support import tiny_config_dict

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
FACTORY = "faulty_party:make_handler"


def _config(tmp_path: Path, rounds: int, **overrides: Any) -> Any:
    cfg = tiny_config_dict(
        tmp_path,
        **{
            "backend.name": "processes",
            "federation.rounds": rounds,
            "federation.min_parties": 1,
            "training.threads": 1,
            **overrides,
        },
    )
    return load_config(cfg)


@pytest.fixture
def markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Let the worker processes import ``faulty_party``; returns the folder they touch their markers in."""
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPCTF_TEST_MARKERS", str(folder))
    return folder


def _faults(monkeypatch: pytest.MonkeyPatch, plan: dict[str, dict[str, str]]) -> None:
    monkeypatch.setenv("MPCTF_TEST_FAULTS", json.dumps(plan))


def _party_rounds(run_dir: Path) -> dict[tuple[int, str], Record]:
    return {
        (r["round"], r["party"]): r
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r["event"] == "party_round"
    }


def _rounds(run_dir: Path) -> list[int]:
    return [r["round"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "round"]


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _worker_pid(run_dir: Path, party: str) -> int | None:
    try:
        return int(json.loads((run_dir / "parties" / party / "worker.json").read_text())["pid"])
    except (OSError, ValueError):
        return None


def test_party_killed_mid_round_is_dropped_then_rejoins(
    tmp_path: Path, markers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _faults(monkeypatch, {"bob": {"2": "hang"}})
    run_dir = tmp_path / "run"
    killed: list[int] = []

    def kill_bob_inside_round_2() -> None:
        _wait_for((markers / "bob-2").exists, 300, "bob to enter round 2")
        pid = _worker_pid(run_dir, "bob")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    def hold_round_4_until_bob_is_back(record: Record) -> None:
        # The dead worker is restarted when round 3 begins; round 4 must find it loaded again.
        if record["event"] == "round" and record["round"] == 3:
            _wait_for(lambda: _worker_pid(run_dir, "bob") not in (None, *killed), 300, "bob's new worker")

    killer = threading.Thread(target=kill_bob_inside_round_2, daemon=True)
    killer.start()
    run_processes(
        _config(tmp_path, rounds=4, **{"federation.round_timeout_s": 600}),
        run_dir,
        resume=False,
        listeners=[hold_round_4_until_bob_is_back],
        handler_factory=FACTORY,
    )
    killer.join(timeout=1)
    assert killed, "bob was never killed"
    assert _rounds(run_dir) == [0, 1, 2, 3, 4]
    parties = _party_rounds(run_dir)
    assert parties[(2, "alice")]["status"] == "ok"
    assert parties[(2, "bob")]["status"] == "failed"
    assert "its worker died during the round" in parties[(2, "bob")]["reason"]
    assert parties[(2, "bob")]["seconds"] < 600  # dropped when it died, not at the deadline
    assert parties[(4, "bob")]["status"] == "ok", parties[(4, "bob")]
    assert (tmp_path / "run" / "logs" / "worker-bob.log").read_text().count("party worker ready") == 2


def test_straggler_is_dropped_at_the_deadline(
    tmp_path: Path, markers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _faults(monkeypatch, {"bob": {"2": "hang"}})
    run_dir = tmp_path / "run"
    began = time.monotonic()
    run_processes(
        _config(tmp_path, rounds=2, **{"federation.round_timeout_s": 10}),
        run_dir,
        resume=False,
        listeners=[],
        handler_factory=FACTORY,
    )
    assert time.monotonic() - began < 600  # bob hangs for an hour
    assert _rounds(run_dir) == [0, 1, 2]
    parties = _party_rounds(run_dir)
    assert parties[(2, "alice")]["status"] == "ok"
    bob = parties[(2, "bob")]
    assert bob["status"] == "failed" and bob["reason"] == "no reply within 10 s"
    assert 10 <= bob["seconds"] < 30


def test_bad_messages_are_rejected_and_the_server_lives(
    tmp_path: Path, markers: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    oversized = 200 * 2**20  # far above the reply limit for the tiny model's LoRA state
    plan = {"1": "garbage", "2": f"oversized:{oversized}", "3": "impersonate", "4": "bad_header"}
    _faults(monkeypatch, {"bob": plan})
    run_dir = tmp_path / "run"
    intruder: list[str] = []

    def knock_with_a_wrong_key(record: Record) -> None:
        if record["event"] == "round" and record["round"] == 1:
            address = json.loads((run_dir / "parties" / "bob" / "worker.json").read_text())["address"]
            try:
                party_link.call(address, b"wrong key" * 4, b"hello", timeout_s=10)
            except (AuthenticationError, ConnectionError, EOFError) as exc:
                intruder.append(type(exc).__name__)

    caplog.set_level(logging.WARNING)
    run_processes(
        _config(tmp_path, rounds=4, **{"federation.round_timeout_s": 120}),
        run_dir,
        resume=False,
        listeners=[knock_with_a_wrong_key],
        handler_factory=FACTORY,
    )
    assert _rounds(run_dir) == [0, 1, 2, 3, 4]
    parties = _party_rounds(run_dir)
    assert all(parties[(r, "alice")]["status"] == "ok" for r in range(1, 5))
    expected = {
        1: ("rejected", "corrupt message"),
        2: ("failed", "is larger than"),
        3: ("rejected", "claims party 'alice'"),
        4: ("rejected", "malformed update header"),
    }
    for round_num, (status, reason) in expected.items():
        record = parties[(round_num, "bob")]
        assert record["status"] == status and reason in record["reason"], record
    assert parties[(2, "bob")]["bytes_up"] == 0  # refused before it was read
    assert intruder == ["AuthenticationError"]
    assert "dropped a connection" in (run_dir / "logs" / "worker-bob.log").read_text()
    logged = caplog.text
    assert "update of party 'bob' rejected" in logged and "party 'bob' failed this round" in logged
