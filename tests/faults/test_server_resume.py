"""The server killed mid-run: ``mpctf launch --resume RUN_DIR`` ends where an uninterrupted run ends.

Real processes throughout: ``mpctf launch`` on the ``processes`` backend, killed with SIGKILL once round 2's
checkpoint exists (its party workers must then exit by themselves), resumed, and compared tensor by tensor with a
run that was never stopped. CPU, one thread per party, so both runs compute the same floats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from mpctf.report.metrics import read_metrics
from support import tiny_config_dict

pytestmark = pytest.mark.slow

MPCTF = [sys.executable, "-m", "mpctf.cli"]
ROUNDS = 4


def _launch(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    with log.open("ab") as out:
        return subprocess.Popen([*MPCTF, "launch", *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def _latest_round(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "checkpoints" / "latest.json").read_text())["round"])
    except (OSError, ValueError):
        return 0


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    data = torch.load(run_dir / "checkpoints" / f"round-{ROUNDS:04d}" / "server_state.pt", weights_only=False)
    assert data["round"] == ROUNDS
    return data["global_state"]


def test_killed_server_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    config = tmp_path / "fed.yaml"
    cfg = tiny_config_dict(
        tmp_path,
        **{"backend.name": "processes", "federation.rounds": ROUNDS, "training.threads": 1},
    )
    config.write_text(yaml.safe_dump(cfg))
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    server = _launch([str(config), "--run-dir", str(killed)], tmp_path / "killed.log")
    deadline = time.monotonic() + 600
    while _latest_round(killed) < 2:
        assert server.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = [
        json.loads((killed / "parties" / p / "worker.json").read_text())["pid"] for p in ("alice", "bob")
    ]
    server.send_signal(signal.SIGKILL)
    server.wait()
    assert _latest_round(killed) < ROUNDS, "the run finished before it could be killed"
    # Nobody is left to stop the workers: they notice their launcher is gone and exit.
    _gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in workers], timeout=30)
    assert not alive, f"orphaned party workers still running: {alive}"

    resumed = _launch(["--resume", str(killed)], tmp_path / "resumed.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-2000:]
    uninterrupted = _launch([str(config), "--run-dir", str(whole)], tmp_path / "whole.log")
    assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-2000:]
    # Normal output carries no third-party deprecation notices or progress bars (the CLI silences them).
    output = (tmp_path / "whole.log").read_text()
    assert not any(
        noise in output for noise in ("FutureWarning", "DeprecationWarning", "Writing model shards")
    )

    starts = [r for r in read_metrics(killed / "metrics.jsonl") if r["event"] == "run_start"]
    assert starts[-1]["resumed_from"] >= 2
    rounds = [r["round"] for r in read_metrics(killed / "metrics.jsonl") if r["event"] == "round"]
    assert rounds[-1] == ROUNDS and sorted(set(rounds)) == list(range(ROUNDS + 1))
    resumed_state, whole_state = _final_state(killed), _final_state(whole)
    assert resumed_state.keys() == whole_state.keys()
    for key in whole_state:
        assert torch.equal(resumed_state[key], whole_state[key]), key
