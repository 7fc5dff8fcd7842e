"""The instruction and causal-LM task formats end to end on the local backend with tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mpctf
from support import tiny_config_dict

pytestmark = pytest.mark.slow


def test_instruction_tuning_learns_to_answer(tmp_path: Path) -> None:
    """Full fine-tuning of the tiny model on one-word replies: answer loss falls, greedy replies start to match."""
    words = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "candle"]
    rows = [{"question": f"Question {i}: what about the {words[i % 8]}?", "answer": "yes"} for i in range(64)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config_dict(
        tmp_path,
        **{
            "training.mode": "full",
            "training.lr": 1e-2,
            "training.local_steps": 4,
            "training.max_length": 48,
            "data.dataset": {"path": str(tmp_path / "qa.jsonl")},
            "data.partition.size": 16,
            "data.eval.max_samples": 16,
            "data.eval.batch_size": 16,
            "task": {
                "type": "instruction",
                "prompt": "{question}",
                "system": "Answer in one word.",
                "max_new_tokens": 4,
            },
            "federation.rounds": 3,
        },
    )
    del cfg["training"]["lora"]
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    first, last = result.rounds[0], result.rounds[-1]
    assert first["exact_match"] == 0.0 and last["exact_match"] > 0.5
    assert last["eval_loss"] < first["eval_loss"] / 2


def test_pretraining_from_scratch_lowers_perplexity(tmp_path: Path) -> None:
    """mode pretrain on packed review text with a one-layer random Llama: held-out perplexity falls."""
    cfg = tiny_config_dict(
        tmp_path,
        **{
            "training": {
                "mode": "pretrain",
                "pretrain": {
                    "from_scratch": True,
                    "architecture": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
                },
                "batch_size": 4,
                "lr": 3e-2,
                "local_steps": 3,
                "max_length": 32,
            },
            "task": {"type": "causal_lm", "text_field": "text"},
            "data.partition.size": 12,
            "data.eval.max_samples": 40,
        },
    )
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    perplexities = [r["perplexity"] for r in result.rounds]
    assert perplexities[0] > 20_000  # a random model is close to uniform over the 49,152-token vocabulary
    assert perplexities[2] < perplexities[1] < perplexities[0], perplexities
    assert perplexities[2] < perplexities[0] / 4, perplexities
