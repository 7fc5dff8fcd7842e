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
        {"name": "dynamic", "bandwidth_power": 1.0},  # the server measures each party's bandwidth
    ],
    ids=lambda s: s["name"],
)
def test_strategy_runs_and_moves_the_model(tmp_path: Path, strategy: dict) -> None:
    cfg = tiny_config_dict(tmp_path, **{"federation.rounds": 2, "federation.strategy": strategy})
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert all(r["status"] == "ok" for r in records if r["event"] == "party_round")
    assert result.rounds[-1]["eval_loss"] != result.rounds[0]["eval_loss"]
    assert all(r["bandwidth_bps"] > 0 for r in records if r["event"] == "party_round")


def test_scaffold_with_local_sgd_the_rule_its_paper_analyses(tmp_path: Path) -> None:
    overrides = {"federation.rounds": 2, "federation.strategy": {"name": "scaffold"}}
    sgd = {"training.optimizer": "sgd", "training.momentum": 0.5, "training.lr": 0.5}
    result = mpctf.run(tiny_config_dict(tmp_path, **overrides, **sgd), run_dir=tmp_path / "run")
    adamw = mpctf.run(tiny_config_dict(tmp_path, **overrides), run_dir=tmp_path / "adamw")
    assert result.rounds[-1]["eval_loss"] < result.rounds[0]["eval_loss"]
    assert result.rounds[-1]["eval_loss"] != adamw.rounds[-1]["eval_loss"]


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


def test_flora_server_evaluates_and_exports_the_merged_model(tmp_path: Path) -> None:
    """FLoRA's global state is each round's stack (rank Σ r_k), merged into the base: the server's scores and the
    exported checkpoint must be those of ``W₀ + Σ_τ B_τ A_τ``."""
    from peft import PeftModel

    from mpctf.config import load_config
    from mpctf.data.federated import FederatedData
    from mpctf.data.tasks import ClassificationTask
    from mpctf.errors import ConfigError
    from mpctf.model.loading import load_model, load_tokenizer
    from mpctf.server.evaluate import evaluate_examples

    cfg_dict = tiny_config_dict(
        tmp_path, **{"federation.rounds": 2, "federation.strategy": {"name": "flora"}}
    )
    cfg_dict["parties"] = [{"name": "alice", "lora_rank": 2}, {"name": "bob"}]
    result = mpctf.run(cfg_dict, run_dir=tmp_path / "run")
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert all(r["status"] == "ok" for r in records if r["event"] == "party_round")
    assert result.rounds[-1]["eval_loss"] != result.rounds[0]["eval_loss"]

    ckpt = tmp_path / "run/checkpoints"
    stacks = [torch.load(ckpt / f"round-000{t}/server_state.pt")["global_state"] for t in (1, 2)]
    merged = torch.load(ckpt / "round-0002/merged_into_base.pt")
    rank = 2 + tiny_config_dict(tmp_path)["training"]["lora"]["r"]
    assert merged and all(s[m + ".lora_A.weight"].shape[0] == rank for s in stacks for m in merged)
    for m, delta in merged.items():
        expected = sum(s[m + ".lora_B.weight"] @ s[m + ".lora_A.weight"] for s in stacks)
        torch.testing.assert_close(delta, expected)

    cfg = load_config(cfg_dict)
    tokenizer = load_tokenizer(cfg.model.name)
    base = load_model(cfg.model, seed=cfg.seed, vocab_size=len(tokenizer))
    model = PeftModel.from_pretrained(base, ckpt / "round-0002/adapter")
    with torch.no_grad():
        for m, delta in merged.items():
            model.get_submodule(m).base_layer.weight.add_(delta)
    task = ClassificationTask(cfg.task, tokenizer, cfg.training.max_length)

    class Bundle:  # the evaluator only needs these attributes
        pad_id = tokenizer.pad_token_id
        device = torch.device("cpu")

    Bundle.model = model
    scores = evaluate_examples(Bundle, task, task.encode_all(FederatedData(cfg).eval_rows(), "eval"), 20)  # type: ignore[arg-type]
    assert scores["eval_loss"] == pytest.approx(result.rounds[-1]["eval_loss"], rel=1e-4)

    logged = (tmp_path / "run/metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="flora cannot resume"):
        mpctf.run(cfg_dict, run_dir=tmp_path / "run", resume=True)
    assert (tmp_path / "run/metrics.jsonl").read_text() == logged  # the refused resume changed nothing
