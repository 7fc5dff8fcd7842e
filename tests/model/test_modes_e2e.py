"""Every training mode end to end: two parties train the tiny model on the local backend, the global eval loss
falls, and each party uploads exactly the mode's trainable state."""

from __future__ import annotations

from pathlib import Path

import pytest

import mpctf
from mpctf.config import load_config
from mpctf.model.bundle import ModelBundle
from mpctf.report.metrics import read_metrics
from support import tiny_config_dict

pytestmark = pytest.mark.slow

#: Learning rates that move each mode's loss clearly within two short rounds.
LEARNING_RATES = {
    "full": 5e-3,
    "lora": 5e-3,
    "prompt_tuning": 5e-2,
    "prefix_tuning": 5e-2,
    "p_tuning": 1e-2,
    "ia3": 2e-1,
}


def fast_config(tmp_path: Path, mode: str) -> dict:
    """The tiny federation, cut down: 2 rounds of 2 steps, short sequences, a small evaluation set."""
    cfg = tiny_config_dict(
        tmp_path,
        **{
            "training.mode": mode,
            "training.lr": LEARNING_RATES[mode],
            "training.local_steps": 2,
            "training.max_length": 32,
            "data.dataset.max_samples": 80,
            "data.partition.size": 8,
            "data.eval.max_samples": 16,
            "data.eval.batch_size": 16,
        },
    )
    if mode != "lora":
        del cfg["training"]["lora"]
    return cfg


@pytest.mark.parametrize("mode", sorted(LEARNING_RATES))
def test_mode_trains_federated_and_ships_only_its_state(tmp_path: Path, mode: str) -> None:
    cfg = fast_config(tmp_path, mode)
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    losses = [r["eval_loss"] for r in result.rounds]
    assert losses[-1] < losses[0] - 0.05, losses
    bundle = ModelBundle.load(load_config(cfg))
    state_bytes = sum(t.numel() * 4 for t in bundle.mode.get_state(bundle.model).values())
    parties = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if r["event"] == "party_round"]
    assert len(parties) == 4 and all(r["status"] == "ok" for r in parties)
    assert all(r["bytes_up_fp32"] == state_bytes for r in parties)
    # The wire adds a small header (tensor names, metrics) to the raw tensors, nothing more.
    assert all(state_bytes < r["bytes_up"] < state_bytes + 64_000 for r in parties)
