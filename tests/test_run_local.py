"""End to end on the local backend with the tiny model: real training, report, resume, PEFT reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mpctf
from mpctf.config import load_config
from mpctf.data.federated import FederatedData
from mpctf.data.tasks import ClassificationTask
from mpctf.model.loading import load_model, load_tokenizer
from mpctf.report.metrics import read_metrics
from mpctf.server.evaluate import evaluate_examples
from support import tiny_config_dict

pytestmark = pytest.mark.slow


def test_local_run_trains_records_and_reports(tmp_path: Path) -> None:
    result = mpctf.run(tiny_config_dict(tmp_path), run_dir=tmp_path / "run")
    run = tmp_path / "run"
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    records = read_metrics(run / "metrics.jsonl")
    events = {r["event"] for r in records}
    assert {"run_start", "plan", "party_round", "round", "run_end"} <= events
    party = [r for r in records if r["event"] == "party_round"]
    assert all(r["status"] == "ok" and r["samples"] == 12 and r["tokens"] > 0 for r in party)
    assert any("model_load_seconds" in r for r in party)
    assert (run / "report.md").is_file() and (run / "accuracy.png").is_file() and (run / "loss.png").is_file()
    assert (run / "config.yaml").is_file()
    # the trained adapter changed the model
    first, last = result.rounds[0], result.rounds[-1]
    assert last["eval_loss"] != first["eval_loss"]


def test_saved_adapter_reloads_with_peft_and_reproduces_accuracy(tmp_path: Path) -> None:
    from peft import PeftModel

    cfg_dict = tiny_config_dict(tmp_path, **{"federation.rounds": 1})
    result = mpctf.run(cfg_dict, run_dir=tmp_path / "run")
    cfg = load_config(cfg_dict)
    tokenizer = load_tokenizer(cfg.model.name)
    base = load_model(cfg.model, seed=cfg.seed, vocab_size=len(tokenizer))
    model = PeftModel.from_pretrained(base, tmp_path / "run/checkpoints/round-0001/adapter")
    task = ClassificationTask(cfg.task, tokenizer, cfg.training.max_length)
    examples = task.encode_all(FederatedData(cfg).eval_rows(), "eval")

    class Bundle:  # the evaluator only needs these attributes
        pad_id = tokenizer.pad_token_id
        device = torch.device("cpu")

    Bundle.model = model
    scores = evaluate_examples(Bundle, task, examples, batch_size=20)  # type: ignore[arg-type]
    assert scores["accuracy"] == pytest.approx(result.final_accuracy)
    assert scores["eval_loss"] == pytest.approx(result.rounds[-1]["eval_loss"], rel=1e-4)


def test_resumed_run_matches_uninterrupted(tmp_path: Path) -> None:
    full = tiny_config_dict(tmp_path)
    mpctf.run(full, run_dir=tmp_path / "full")
    mpctf.run(tiny_config_dict(tmp_path, **{"federation.rounds": 1}), run_dir=tmp_path / "cut")
    resumed = mpctf.run(full, run_dir=tmp_path / "cut", resume=True)
    assert [r["round"] for r in resumed.rounds] == [2]
    a = torch.load(tmp_path / "full/checkpoints/round-0002/server_state.pt")["global_state"]
    b = torch.load(tmp_path / "cut/checkpoints/round-0002/server_state.pt")["global_state"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_logs_a_checkpointed_round_whose_record_was_lost(tmp_path: Path) -> None:
    """The server can die after saving round 1's checkpoint and before logging it: the resume logs it from the
    checkpoint and carries the byte counters on, so the totals match an uninterrupted run."""
    full = tiny_config_dict(tmp_path)
    whole = mpctf.run(full, run_dir=tmp_path / "full")
    mpctf.run(tiny_config_dict(tmp_path, **{"federation.rounds": 1}), run_dir=tmp_path / "cut")
    metrics = tmp_path / "cut/metrics.jsonl"
    kept = [r for r in read_metrics(metrics) if not (r["event"] == "round" and r["round"] == 1)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
    resumed = mpctf.run(full, run_dir=tmp_path / "cut", resume=True)
    rounds = [r for r in read_metrics(metrics) if r["event"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[1]["recovered_from_checkpoint"] is True
    assert rounds[1]["accuracy"] == whole.rounds[1]["accuracy"]
    assert [r["round"] for r in resumed.rounds] == [1, 2]
    # Headers carry timings, so a reply's size varies by a few bytes from run to run; without the carry-over
    # the totals would be about half.
    for key in ("cumulative_bytes_up", "cumulative_bytes_down", "cumulative_bytes_up_fp32"):
        assert resumed.rounds[-1][key] == pytest.approx(whole.rounds[-1][key], rel=0.01), key
