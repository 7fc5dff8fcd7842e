"""The whole pipeline on Flower's deployment engine: real SuperLink, SuperNodes and party processes."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

import mpctf
from mpctf.report.metrics import read_metrics
from support import tiny_config_dict

pytestmark = [pytest.mark.slow, pytest.mark.flower]


def _our_processes() -> list[psutil.Process]:
    names = ("flower-superlink", "flower-supernode", "mpctf.runtime.party_link", "flwr-serverapp")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(n in cmd for n in names):
            found.append(proc)
    return found


def test_flower_run_matches_local_semantics_and_cleans_up(tmp_path: Path) -> None:
    before = {p.pid for p in _our_processes()}
    cfg = tiny_config_dict(
        tmp_path,
        **{
            "backend.name": "flower",
            "data.validation": {"fraction": 0.2},
            "training.optimizer_state": "keep",
        },
    )
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    run = tmp_path / "run"
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    records = read_metrics(run / "metrics.jsonl")
    parties = [r for r in records if r["event"] == "party_round"]
    assert len(parties) == 4 and all(r["status"] == "ok" for r in parties)
    # Federated validation crosses Flower as one more message a scored round; only metrics come back.
    reports = [r for r in records if r["event"] == "party_validation"]
    assert sorted((r["round"], r["party"], r["status"]) for r in reports) == [
        (n, p, "ok") for n in (1, 2) for p in ("alice", "bob")
    ]
    assert all("val_accuracy" in r for r in result.rounds[1:])
    assert next(r for r in records if r["event"] == "run_end")["best_round"] in (1, 2)
    # the model is loaded once per party process, reported with the first update only
    assert sorted(r["party"] for r in parties if "model_load_seconds" in r) == ["alice", "bob"]
    for name in ("superlink", "serverapp", "supernode-alice", "worker-bob"):
        assert (run / "logs" / f"{name}.log").is_file(), name
    assert (run / "report.md").is_file()
    assert (run / "checkpoints/round-0002/adapter/adapter_model.safetensors").is_file()
    leftover = [p for p in _our_processes() if p.pid not in before]
    assert not leftover, [" ".join(p.cmdline()) for p in leftover]
