"""Chunking: every formula against hand-computed plans, validation messages, and chunk properties."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctf.data.chunking import (
    CHUNKINGS,
    MemoryBudget,
    PartyDataStats,
    chunk_indices,
    divisors_at_most,
    epoch_of,
    epoch_permutation,
    plan_parties,
    token_boundaries,
)


def stats(num_samples: int, length: int = 1) -> PartyDataStats:
    return PartyDataStats(num_samples=num_samples, token_lengths=[length] * num_samples)


def plan_one(strategy: str, params: dict, party_stats: PartyDataStats, batch_size: int = 1, **kwargs):
    return plan_parties(strategy, params, {"a": party_stats}, batch_size=batch_size, **kwargs)["a"]


# --- formulas, hand-computed ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "size", "rounds", "chunk"),
    [(10, 4, 3, 4), (9, 4, 3, 3), (3, 4, 1, 3), (8, 4, 2, 4)],
)
def test_fixed_size(n, size, rounds, chunk):
    plan = plan_one("fixed_size", {"size": size}, stats(n))
    assert (plan.rounds_per_epoch, plan.chunk_samples, plan.chunk_tokens) == (rounds, chunk, None)
    assert plan.chunk_samples <= min(size, n)


@pytest.mark.parametrize(
    ("fraction", "n", "rounds", "chunk"),
    [
        (0.3, 10, 4, 3),
        (0.1, 100, 10, 10),
        (1 / 3, 9, 3, 3),
        (1 / 49, 98, 49, 2),
        (1.0, 7, 1, 7),
        (0.15, 10, 7, 2),
        (0.5, 9, 2, 5),
    ],
)
def test_percentage(fraction, n, rounds, chunk):
    plan = plan_one("percentage", {"fraction": fraction}, stats(n))
    assert (plan.rounds_per_epoch, plan.chunk_samples) == (rounds, chunk)
    assert plan.chunk_samples <= math.ceil(fraction * n)


def test_max_volume_per_party_and_equal_rounds():
    parties = {"big": stats(10), "small": stats(6)}
    plans = plan_parties("max_volume", {"max": 4}, parties, batch_size=2)
    assert [(p.rounds_per_epoch, p.chunk_samples) for p in plans.values()] == [(3, 4), (2, 3)]
    plans = plan_parties("max_volume", {"max": 4, "equal_rounds": True}, parties, batch_size=2)
    assert [(p.rounds_per_epoch, p.chunk_samples) for p in plans.values()] == [(3, 4), (3, 2)]


def test_token_unit_counts_tokens():
    plan = plan_one("fixed_size", {"size": 10, "unit": "tokens"}, stats(6, length=3))  # T = 18
    assert (plan.num_tokens, plan.rounds_per_epoch, plan.chunk_tokens, plan.chunk_samples) == (18, 2, 9, 3)
    plan = plan_one("percentage", {"fraction": 0.25, "unit": "tokens"}, stats(8, length=5))  # T = 40
    assert (plan.rounds_per_epoch, plan.chunk_tokens) == (4, 10)


def _budget(available: int) -> MemoryBudget:
    return MemoryBudget(available_bytes=available, peak_bytes=lambda m: 100 + 10 * m)


@pytest.mark.parametrize(
    ("available", "params", "micro"),
    [
        (200, {"safety_factor": 1.0}, 8),  # 100 + 10m <= 200: m <= 10 -> the whole batch of 8
        (150, {"safety_factor": 1.0}, 4),  # m <= 5 -> largest divisor of 8 is 4
        (300, {"safety_factor": 0.5}, 4),  # 0.5 * 300 = 150, as above
        (200, {"safety_factor": 1.0, "max_micro_batch": 3}, 2),
        (119, {"safety_factor": 1.0}, 1),
    ],
)
def test_memory_micro_batch(available, params, micro):
    plan = plan_one("memory", params, stats(64), batch_size=8, memory={"a": _budget(available)})
    assert (plan.micro_batch, plan.grad_accum) == (micro, 8 // micro)
    assert (plan.est_peak_bytes, plan.available_bytes) == (100 + 10 * micro, available)


def test_memory_rounds_balanced_and_not():
    parties = {"big": stats(100), "small": stats(20)}
    memory = {p: _budget(10_000) for p in parties}
    params = {"steps_per_round": 2}  # 2 steps x batch 8 = 16 samples per round
    plans = plan_parties("memory", {**params, "balanced": False}, parties, batch_size=8, memory=memory)
    assert [(p.rounds_per_epoch, p.chunk_samples) for p in plans.values()] == [(7, 15), (2, 10)]
    plans = plan_parties("memory", params, parties, batch_size=8, memory=memory)
    assert [(p.rounds_per_epoch, p.chunk_samples) for p in plans.values()] == [(7, 15), (7, 3)]


def test_other_strategies_report_memory_without_shrinking_the_batch():
    plan = plan_one("fixed_size", {"size": 4}, stats(16), batch_size=4, memory={"a": _budget(50)})
    assert (plan.micro_batch, plan.grad_accum, plan.est_peak_bytes, plan.available_bytes) == (4, 1, 140, 50)
    plan = plan_one("fixed_size", {"size": 4}, stats(16), batch_size=4)
    assert (plan.micro_batch, plan.est_peak_bytes, plan.available_bytes) == (4, None, None)


def test_divisors_at_most():
    assert divisors_at_most(12, 5) == [1, 2, 3, 4]
    assert divisors_at_most(7, 6) == [1]


def test_token_boundaries_by_midpoint():
    # ends 2,4,6,8,12,16; midpoints 1,3,5,7,10,14; the cut at T/2 = 8 falls after the fourth sample
    assert token_boundaries([2, 2, 2, 2, 4, 4], 2) == [0, 4, 6]
    # midpoints 0.5, 1.5, 6 against cuts at 3.33 and 6.67 would leave chunk 3 empty; the cuts are nudged
    assert token_boundaries([1, 1, 8], 3) == [0, 1, 2, 3]
    # midpoints 0.5, 5, 9.5, 10.5, 11.5 against cuts at 3, 6, 9: chunk 3 would be empty, so it takes sample 2
    assert token_boundaries([1, 8, 1, 1, 1], 4) == [0, 1, 2, 3, 5]
    assert token_boundaries([5], 1) == [0, 1]


# --- validation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "params", "message"),
    [
        ("fixed_size", {"size": 0}, "greater than 0"),
        ("percentage", {"fraction": 0.0}, "greater than 0"),
        ("percentage", {"fraction": 1.5}, "less than or equal to 1"),
        ("max_volume", {"max": 0}, "greater than 0"),
        ("max_volume", {"max": 4, "size": 2}, "size"),
        ("memory", {"unit": "tokens"}, "unit"),
        ("nope", {}, "unknown chunking strategy 'nope'; known: fixed_size, max_volume, memory, percentage"),
    ],
)
def test_invalid_params(strategy, params, message):
    with pytest.raises(ValueError, match=message):
        plan_one(strategy, params, stats(8))


def test_token_budget_smaller_than_a_sample_names_the_party():
    party = PartyDataStats(num_samples=3, token_lengths=[4, 9, 2])
    with pytest.raises(
        ValueError, match="`max` 8 tokens is smaller than one sample: party 'a' has a sample of 9"
    ):
        plan_one("max_volume", {"max": 8, "unit": "tokens"}, party)


def test_party_smaller_than_a_batch_is_named():
    with pytest.raises(ValueError, match="party 'tiny' has 3 samples, fewer than one batch of 4"):
        plan_parties("percentage", {"fraction": 0.5}, {"ok": stats(8), "tiny": stats(3)}, batch_size=4)


def test_more_rounds_than_samples_is_refused():
    with pytest.raises(ValueError, match="party 'a' has 5 samples, fewer than the 10 rounds per epoch"):
        plan_one("percentage", {"fraction": 0.1}, stats(5))
    with pytest.raises(ValueError, match="party 'small' has 2 samples, fewer than the 5 rounds"):
        plan_parties(
            "max_volume",
            {"max": 2, "equal_rounds": True},
            {"big": stats(10), "small": stats(2)},
            batch_size=1,
        )


def test_memory_errors():
    with pytest.raises(ValueError, match="needs a memory budget for party 'a'"):
        plan_one("memory", {}, stats(8))
    with pytest.raises(ValueError, match="party 'a' cannot train even one sample per micro-batch"):
        plan_one("memory", {"safety_factor": 1.0}, stats(8), memory={"a": _budget(109)})
    with pytest.raises(ValueError, match=r"parties without data stats: \['ghost'\]"):
        plan_one("fixed_size", {"size": 2}, stats(8), memory={"ghost": _budget(109)})


def test_other_input_errors():
    with pytest.raises(ValueError, match="`batch_size` must be >= 1"):
        plan_one("fixed_size", {"size": 2}, stats(8), batch_size=0)
    with pytest.raises(ValueError, match="no parties"):
        plan_parties("fixed_size", {"size": 2}, {}, batch_size=1)
    with pytest.raises(ValueError, match="2 token lengths for 3 samples"):
        PartyDataStats(num_samples=3, token_lengths=[1, 2])
    with pytest.raises(ValueError, match="at least one token"):
        PartyDataStats(num_samples=2, token_lengths=[1, 0])
    plan = plan_one("fixed_size", {"size": 2}, stats(8))
    with pytest.raises(ValueError, match="`round_num` starts at 1"):
        chunk_indices(plan, [1] * 8, 0, seed=0)
    with pytest.raises(ValueError, match="7 token lengths for a plan of 8 samples"):
        chunk_indices(plan, [1] * 7, 1, seed=0)


def test_registry_lists_the_four_strategies():
    assert CHUNKINGS.names() == ["fixed_size", "max_volume", "memory", "percentage"]


# --- chunks ---------------------------------------------------------------------------------------------
def test_epochs_reshuffle_and_follow_rounds():
    plan = plan_one("fixed_size", {"size": 10}, stats(50))
    assert [epoch_of(plan, r) for r in (1, 5, 6, 10, 11)] == [1, 1, 2, 2, 3]
    assert chunk_indices(plan, [1] * 50, 6, seed=0) == epoch_permutation("a", 50, 2, 0)[:10].tolist()
    assert epoch_permutation("a", 50, 1, 0).tolist() != epoch_permutation("a", 50, 2, 0).tolist()
    assert epoch_permutation("a", 50, 1, 0).tolist() != epoch_permutation("b", 50, 1, 0).tolist()


def test_permutation_does_not_depend_on_the_process_hash_seed():
    code = "from mpctf.data.chunking import epoch_permutation as p; print(p('party-1', 20, 3, 7).tolist())"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout
        for seed in ("1", "2")
    }
    assert runs == {str(epoch_permutation("party-1", 20, 3, 7).tolist()) + "\n"}


@st.composite
def chunk_cases(draw):
    lengths = draw(st.lists(st.integers(1, 50), min_size=1, max_size=80))
    n, total, longest = len(lengths), sum(lengths), max(lengths)
    unit = draw(st.sampled_from(["samples", "tokens"]))
    volume = total if unit == "tokens" else n
    smallest = longest if unit == "tokens" else 1
    strategy, params = draw(
        st.sampled_from(["fixed_size", "percentage", "max_volume"]).flatmap(
            lambda s: st.tuples(
                st.just(s),
                st.fixed_dictionaries(
                    {"size": st.integers(smallest, max(smallest, volume))}
                    if s == "fixed_size"
                    else {"fraction": st.floats(1.0 / n, 1.0)}
                    if s == "percentage"
                    else {"max": st.integers(smallest, max(smallest, volume))}
                ),
            )
        )
    )
    return lengths, strategy, {**params, "unit": unit}, draw(st.integers(0, 2**40)), draw(st.integers(1, 3))


@settings(max_examples=200, deadline=None)
@given(chunk_cases())
def test_chunks_partition_each_epoch(case):
    lengths, strategy, params, seed, epoch = case
    party = PartyDataStats(num_samples=len(lengths), token_lengths=lengths)
    try:
        plan = plan_one(strategy, params, party)
    except ValueError as exc:  # only a fraction so small that rounds outnumber samples may be refused
        assert "rounds per epoch" in str(exc)
        return
    r_count, n, total = plan.rounds_per_epoch, len(lengths), sum(lengths)
    first_round = (epoch - 1) * r_count + 1
    chunks = [chunk_indices(plan, lengths, first_round + r, seed) for r in range(r_count)]
    assert sorted(i for c in chunks for i in c) == list(range(n))  # disjoint and covering
    assert all(chunks)  # no idle round
    assert chunks[0] == chunk_indices(plan, lengths, first_round, seed)  # deterministic
    if params["unit"] == "samples":
        assert {len(c) for c in chunks} <= {n // r_count, math.ceil(n / r_count)}
        assert max(len(c) for c in chunks) == plan.chunk_samples
    else:
        for c in chunks:  # a chunk overshoots T/R by less than one sample, or is a single sample
            tokens = sum(lengths[i] for i in c)
            assert len(c) == 1 or r_count * tokens <= total + r_count * max(lengths)
    if strategy == "percentage":  # the fewest rounds whose shares cover the data (up to float rounding)
        assert r_count * params["fraction"] > 1 - 1e-6
        assert (r_count - 1) * params["fraction"] < 1 + 1e-6
    else:
        budget = params.get("size", params.get("max"))
        volume = total if params["unit"] == "tokens" else n
        assert r_count == math.ceil(volume / budget)
