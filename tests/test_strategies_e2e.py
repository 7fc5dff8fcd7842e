"""Strategies end to end: real parties training the tiny model on the local backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mpctf
from mpctf.report.metrics import read_metrics
from support import tiny_config_dict

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "fedadam", "eta": 0.01},
        {"name": "scaffold"},
        {"name": "fedprox", "mu": 0.1},
        {"name": "ffa_lora"},
        {"name": "median"},
        {"name": "dynamic"},
    ],
    ids=lambda s: s["name"],
)
def test_strategy_runs_and_moves_the_model(tmp_path: Path, strategy: dict) -> None:
    cfg = tiny_config_dict(tmp_path, **{"federation.rounds": 2, "federation.strategy": strategy})
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert all(r["status"] == "ok" for r in records if r["event"] == "party_round")
    assert result.rounds[-1]["eval_loss"] != result.rounds[0]["eval_loss"]


def test_ffa_lora_keeps_lora_a_frozen(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"federation.rounds": 1, "federation.strategy": {"name": "ffa_lora"}})
    mpctf.run(cfg, run_dir=tmp_path / "run")
    state = torch.load(tmp_path / "run/checkpoints/round-0001/server_state.pt")["global_state"]
    cfg0 = tiny_config_dict(tmp_path, **{"federation.rounds": 1})
    from mpctf.config import load_config
    from mpctf.model.bundle import ModelBundle

    initial = ModelBundle.load(load_config(cfg0))
    start = initial.mode.get_state(initial.model)
    a_keys = [k for k in state if ".lora_A." in k]
    b_keys = [k for k in state if ".lora_B." in k]
    assert a_keys and all(torch.equal(state[k], start[k]) for k in a_keys)
    assert any(not torch.equal(state[k], start[k]) for k in b_keys)


def test_heterogeneous_ranks_with_hetlora(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"federation.rounds": 2, "federation.strategy": {"name": "hetlora"}})
    cfg["training"]["lora"] = {"r": 4, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    cfg["parties"] = [{"name": "alice", "lora_rank": 2, "lora_alpha": 4}, {"name": "bob", "lora_rank": 4}]
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert all(r["status"] == "ok" for r in records if r["event"] == "party_round")
    assert result.rounds[-1]["eval_loss"] != result.rounds[0]["eval_loss"]
