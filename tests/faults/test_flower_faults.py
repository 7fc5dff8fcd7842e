"""A party's worker killed mid-round on the Flower backend: the round goes on, the worker is restarted on its
port, and the party answers again in a later round."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mpctf.config import load_config
from mpctf.launch import federation
from mpctf.report.metrics import read_metrics
from support import tiny_config_dict

pytestmark = [pytest.mark.slow, pytest.mark.flower]

HERE = Path(__file__).resolve().parent


def test_killed_worker_is_restarted_and_its_party_rejoins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPCTF_TEST_MARKERS", str(markers))
    # bob hangs in round 1 until killed; alice holds round 2 until bob's worker is back, so it serves round 3.
    monkeypatch.setenv(
        "MPCTF_TEST_FAULTS", json.dumps({"bob": {"1": "hang"}, "alice": {"2": "wait:bob-back"}})
    )
    monkeypatch.setattr(federation, "HANDLER_FACTORY", "faulty_party:make_handler")
    config = load_config(
        tiny_config_dict(
            tmp_path,
            **{
                "backend.name": "flower",
                "federation.rounds": 3,
                "federation.min_parties": 1,
                "federation.round_timeout_s": 300,
                "training.threads": 1,
            },
        )
    )
    run_dir = tmp_path / "run"
    killed: list[int] = []

    def kill_bob_inside_round_1() -> None:
        deadline = time.monotonic() + 600
        while not (markers / "bob-1").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        ready = run_dir / "parties" / "bob" / "worker.json"
        pid = json.loads(ready.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        while time.monotonic() < deadline:  # the restarted worker rewrites its ready marker
            try:
                if json.loads(ready.read_text())["pid"] != pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        (markers / "bob-back").touch()

    threading.Thread(target=kill_bob_inside_round_1, daemon=True).start()
    federation.run_flower(config, run_dir, resume=False, listeners=[])
    assert killed
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records if r["event"] == "round"] == [0, 1, 2, 3]
    status = {(r["round"], r["party"]): r["status"] for r in records if r["event"] == "party_round"}
    assert status[(1, "alice")] == "ok" and status[(1, "bob")] == "failed"
    assert any(status.get((r, "bob")) == "ok" for r in (2, 3)), status
    assert (run_dir / "logs" / "worker-bob.log").read_text().count("party worker ready") == 2
