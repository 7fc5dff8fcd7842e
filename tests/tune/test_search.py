"""Successive halving's pure parts against hand-worked schedules."""

from __future__ import annotations

import pytest

from mpctf.tune.search import Trial, apply_overrides, grid, keep, rung_rounds


def test_a_small_space_is_tried_whole_and_a_large_one_sampled_the_same_way_every_time() -> None:
    space = {"training.lr": [1e-3, 3e-3], "training.local_steps": [2, 5]}
    assert grid(space, 8, seed=0) == [
        {"training.lr": 1e-3, "training.local_steps": 2},
        {"training.lr": 1e-3, "training.local_steps": 5},
        {"training.lr": 3e-3, "training.local_steps": 2},
        {"training.lr": 3e-3, "training.local_steps": 5},
    ]
    big = {"a": list(range(5)), "b": list(range(5))}
    sample = grid(big, 6, seed=3)
    assert len(sample) == 6 and len({tuple(p.values()) for p in sample}) == 6
    assert sample == grid(big, 6, seed=3) and sample != grid(big, 6, seed=4)


@pytest.mark.parametrize(
    ("min_rounds", "eta", "max_rounds", "trials", "expected"),
    [
        (1, 2, 4, 8, [1, 2, 4]),  # 8 → 4 → 2 → 1: 8 + 4·1 + 2·2 = 16 rounds, 4 runs' worth
        (1, 3, 9, 9, [1, 3, 9]),
        (1, 2, 10, 4, [1, 2, 10]),  # the last rung always reaches federation.rounds
        (2, 2, 3, 8, [2, 3]),
        (1, 2, 5, 1, [5]),
    ],
)
def test_rounds_per_rung(min_rounds, eta, max_rounds, trials, expected) -> None:
    assert rung_rounds(min_rounds, eta, max_rounds, trials) == expected


def test_a_rung_keeps_the_best_third_and_breaks_ties_by_trial_number() -> None:
    trials = [Trial(n, {}, [(1, s)]) for n, s in enumerate([0.5, 0.9, 0.7, 0.9, 0.1], start=1)]
    assert [t.number for t in keep(trials, 3, higher_is_better=True, last_rung=False)] == [2, 4]
    assert [t.number for t in keep(trials, 3, higher_is_better=False, last_rung=False)] == [5, 1]
    assert [t.number for t in keep(trials, 3, higher_is_better=True, last_rung=True)] == [2]


def test_overrides_replace_whole_values_at_dotted_keys() -> None:
    base = {
        "training": {"lr": 1.0, "lora": {"r": 8}},
        "federation": {"strategy": {"name": "fedavg", "weight": "uniform"}},
    }
    out = apply_overrides(base, {"training.lora.r": 4, "federation.strategy": {"name": "fedavgm"}})
    assert out == {"training": {"lr": 1.0, "lora": {"r": 4}}, "federation": {"strategy": {"name": "fedavgm"}}}
    assert base["training"]["lora"]["r"] == 8  # the base is not changed
    with pytest.raises(ValueError, match=r"`training.lr.x` goes through 'lr', which is not a section"):
        apply_overrides(base, {"training.lr.x": 1})
