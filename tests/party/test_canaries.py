"""Canary rows for the one-run audit of DP-SGD: their shape, the scoring, and that the audit has power."""

from __future__ import annotations

import random

import pytest
import torch

from mpctf.aggregation.base import PartyHooks
from mpctf.data.task_base import Example, Task, answer_loss, scored_logits
from mpctf.party.canaries import CanaryRows
from mpctf.party.trainer import TrainSettings, train_round
from mpctf.privacy.config import AuditParams
from support import tiny_party


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_party(tmp_path_factory.mktemp("canaries"), 16)


def test_a_classification_canary_is_random_tokens_answered_by_a_label(setup) -> None:
    _, task, examples = setup
    canaries = CanaryRows(task, examples, AuditParams(canary_rows=40))
    assert len(canaries.rows) == 40
    for row in canaries.rows:
        assert row.input_ids[row.prompt_len :] == task.answer_ids[row.label]
        assert 1 <= row.prompt_len <= 16
    assert {row.label for row in canaries.rows} == {0, 1}
    trained = canaries.trained()
    assert len(trained) == sum(canaries.included) and 0 < len(trained) < 40


def test_other_tasks_canaries_keep_the_shape_of_supervision(setup) -> None:
    _, task, _ = setup
    lm_row = Task.canary(task, Example(list(range(50)), 0), random.Random(0))
    assert (len(lm_row.input_ids), lm_row.prompt_len) == (16, 0)
    chat_row = Task.canary(task, Example(list(range(20)), 12), random.Random(0))
    assert (len(chat_row.input_ids), chat_row.prompt_len) == (16, 12)


def test_row_nll_sums_to_the_batch_loss(setup) -> None:
    bundle, task, examples = setup
    rows = task.row_nll(bundle.model, examples[:6], batch_size=4, device=bundle.device)
    batch = task.collate(examples[:6])
    with torch.no_grad():
        expected = float(answer_loss(*scored_logits(bundle.model, batch)[:2]))
    assert sum(s for s, _ in rows) / sum(c for _, c in rows) == pytest.approx(expected, rel=1e-4)


def test_the_audit_bounds_nothing_without_training_and_something_once_canaries_are_memorised(setup) -> None:
    bundle, task, examples = setup
    start = {k: v.clone() for k, v in bundle.mode.get_state(bundle.model).items()}
    canaries = CanaryRows(task, examples, AuditParams(canary_rows=60))
    canaries.before_training(bundle.model, bundle.device, 32)
    assert canaries.audit(bundle.model, bundle.device, 32, 1e-5)["audit_rows_epsilon_lower_bound"] == 0.0
    # Without DP, many passes over the trained canaries: their losses fall, the others' do not.
    settings = TrainSettings(lr=2e-2, weight_decay=0.0, micro_batch=8, grad_accum=1, max_steps=None, seed=0)
    try:
        for _ in range(EPOCHS):
            train_round(bundle, task, canaries.trained(), settings, PartyHooks())
        metrics = canaries.audit(bundle.model, bundle.device, 32, 1e-5)
    finally:
        bundle.mode.set_state(bundle.model, start)
    assert metrics["audit_rows_epsilon_lower_bound"] > 0.5
    assert metrics["audit_rows_correct"] > 0.8 * metrics["audit_rows_guesses"]


EPOCHS = 8
