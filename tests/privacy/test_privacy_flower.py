"""Secure aggregation on Flower's deployment engine: its extra exchanges travel as ordinary task messages through
the SuperLink to long-lived party processes, and the result is FedAvg's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mpctf
from mpctf.report.metrics import read_metrics
from mpctf.server.checkpoint import load_latest
from support import tiny_config_dict

pytestmark = [pytest.mark.slow, pytest.mark.flower]


def test_secure_aggregation_over_flower_matches_local_fedavg(tmp_path: Path) -> None:
    overrides = {
        "parties": [{"name": "alice"}, {"name": "bob"}, {"name": "carol"}],
        "federation.rounds": 1,
        "training.threads": 1,
    }
    mpctf.run(tiny_config_dict(tmp_path / "local", **overrides), run_dir=tmp_path / "local/run")
    flower = tiny_config_dict(
        tmp_path / "flower", **overrides, **{"backend.name": "flower", "privacy": {"secure_aggregation": {}}}
    )
    result = mpctf.run(flower, run_dir=tmp_path / "flower/run")
    assert result.rounds[1]["privacy_exchange_bytes_up"] > 0
    parties = [r for r in read_metrics(tmp_path / "flower/run/metrics.jsonl") if r["event"] == "party_round"]
    assert sorted(r["party"] for r in parties if r["status"] == "ok") == ["alice", "bob", "carol"]
    secure, plain = load_latest(tmp_path / "flower/run"), load_latest(tmp_path / "local/run")
    assert secure is not None and plain is not None
    for key, value in plain.global_state.items():
        torch.testing.assert_close(secure.global_state[key], value, atol=1e-4, rtol=0, msg=key)
