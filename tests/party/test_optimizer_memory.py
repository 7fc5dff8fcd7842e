"""``training.optimizer_state``: a fresh AdamW makes every coordinate's first step exactly ``lr`` (its bias
correction turns the step into ``lr · sign(g)``); a kept state carries the moments into the next round."""

from __future__ import annotations

import pytest
import torch

from mpctf.aggregation.base import PartyHooks
from mpctf.party.trainer import OptimizerMemory, TrainSettings, train_round
from support import tiny_party

LR = 1e-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_party(tmp_path_factory.mktemp("memory"), 8)


def one_step(setup, memory: OptimizerMemory | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The change of the trainable state over one step of 4 examples."""
    bundle, task, examples = setup
    settings = TrainSettings(lr=LR, weight_decay=0.0, micro_batch=4, grad_accum=1, max_steps=1, seed=seed)
    before = {k: v.clone() for k, v in bundle.mode.get_state(bundle.model).items()}
    train_round(bundle, task, examples[seed * 4 : seed * 4 + 4], settings, PartyHooks(), memory=memory)
    after = bundle.mode.get_state(bundle.model)
    return {k: after[k] - before[k] for k in before}


def moved(delta: dict[str, torch.Tensor]) -> torch.Tensor:
    flat = torch.cat([d.flatten() for d in delta.values()]).abs()
    return flat[flat > 0]


def share_at_lr(steps: torch.Tensor) -> float:
    """The share of moved coordinates that moved by ``lr`` (to 1 %; a gradient below AdamW's eps moves less)."""
    return float(((steps - LR).abs() < 0.01 * LR).float().mean())


def test_a_fresh_adamw_moves_every_coordinate_by_lr_on_its_first_step(setup) -> None:
    one_step(setup, None)  # B leaves zero, so that A gets gradients too
    steps = moved(one_step(setup, None, seed=1))
    assert steps.numel() > 0
    assert share_at_lr(steps) > 0.95


def test_a_kept_state_continues_the_moments_instead_of_restarting_them(setup) -> None:
    memory = OptimizerMemory()
    one_step(setup, memory)
    state = memory.state["state"]  # type: ignore[index]
    assert all(float(s["step"]) == 1 for s in state.values())
    steps = moved(one_step(setup, memory, seed=1))
    assert all(float(s["step"]) == 2 for s in memory.state["state"].values())  # type: ignore[index]
    # With the first round's moments, the second round's first step is no longer lr on every coordinate.
    assert share_at_lr(steps) < 0.5


def test_a_state_saved_for_other_tensors_is_not_restored(setup) -> None:
    memory = OptimizerMemory()
    one_step(setup, memory)
    memory.keys = ["some.other.tensor"]
    assert share_at_lr(moved(one_step(setup, memory, seed=1))) > 0.95
