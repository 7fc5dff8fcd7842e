"""Steinke, Nasr and Jagielski's one-run lower bound on ε, against values computed by hand."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats

from mpctf.privacy.audit import one_run_audit, one_run_epsilon_lower_bound, one_run_p_value


@pytest.mark.parametrize("guesses", [10, 100, 1000])
def test_all_guesses_right_without_delta_gives_the_closed_form(guesses: int) -> None:
    # δ = 0 and v = r: the p-value is q^r, so the bound solves q = 0.05^(1/r), ε = ln(q / (1 - q)).
    q = 0.05 ** (1 / guesses)
    expected = math.log(q / (1 - q))
    assert one_run_epsilon_lower_bound(guesses, guesses, guesses, 0.0, 0.95) == pytest.approx(
        expected, abs=1e-6
    )


def test_p_value_is_the_binomial_tail_plus_the_delta_term() -> None:
    q = 1 / (1 + math.exp(-1.0))
    tail = stats.binom.sf(6, 10, q)  # P[Bin(10, q) >= 7]
    assert one_run_p_value(20, 10, 7, 1.0, 0.0) == pytest.approx(tail)
    alpha = max(sum(stats.binom.pmf(7 - j, 10, q) for j in range(1, i + 1)) / i for i in range(1, 8))
    assert one_run_p_value(20, 10, 7, 1.0, 1e-3) == pytest.approx(tail + alpha * 1e-3 * 2 * 20)


def test_chance_guesses_bound_nothing() -> None:
    assert one_run_epsilon_lower_bound(100, 100, 50, 1e-5) == 0.0
    rng = random.Random(1)
    included = [rng.random() < 0.5 for _ in range(500)]
    assert one_run_audit([rng.random() for _ in included], included, 1e-5)[0] == 0.0


def test_the_bound_stays_under_the_epsilon_of_randomized_response() -> None:
    """Scores from ε-DP randomized response of the inclusion bit: the 95 % bound is below ε (and above 0)."""
    epsilon = 1.0
    rng = random.Random(7)
    included = [rng.random() < 0.5 for _ in range(2000)]
    keep = math.exp(epsilon) / (1 + math.exp(epsilon))
    scores = [float(b if rng.random() < keep else not b) + 0.01 * rng.random() for b in included]
    bound, guesses, right = one_run_audit(scores, included, 1e-6)
    assert 0.2 < bound < epsilon
    assert 0 < right <= guesses


def test_scores_and_canaries_must_pair_up() -> None:
    with pytest.raises(ValueError, match="3 scores for 2 canaries"):
        one_run_audit([1.0, 2.0, 3.0], [True, False], 1e-5)
