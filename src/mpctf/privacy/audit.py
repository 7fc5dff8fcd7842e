"""Empirical privacy from one run: canary directions, the ε they imply, and a rigorous lower bound.

One-shot empirical privacy estimation (Andrew, Chien, Cohen-Addad, Lucas, Roth, Wang, Zhang, Zhou, ICLR 2024,
"One-shot Empirical Privacy Estimation for Federated Learning"): ``k`` canary updates ``C·c_j`` in random unit
directions ``c_j`` take part in training like parties; ``k'`` more directions are never inserted. The cosines
``g_j = cos(c_j, θ_T − θ_0)`` of the inserted ones spread around a mean ``μ̂ > 0``; those never inserted follow the
null ``N(0, 1/d)``. The ε that separates the two Gaussians (Steinke 2022, arXiv 2210.00597) is the estimate:

    L(y) = ln p(y)/q(y) = a·y² + b·y + c,  a = ½(σ₂⁻² − σ₁⁻²),  b = μ₁/σ₁² − μ₂/σ₂²,
    c = ½((μ₂/σ₂)² − (μ₁/σ₁)²) + ln σ₂ − ln σ₁
    δ_{P‖Q}(ε) = Pr_P[L > ε] − e^ε · Pr_Q[L > ε];   ε(δ) = min ε ≥ 0 with max(δ_{P‖Q}, δ_{Q‖P}) ≤ δ

It is an estimate, not a bound (:func:`estimate_epsilon` fits the two with one pooled variance, as the
Gaussian mechanism shifts the mean only, and gives a 95 % interval). :func:`epsilon_lower_bound` is a bound:
for each threshold on the scores, the Jeffreys upper limits of the false positive and false negative rates give
``ε ≥ max(ln(1 − δ − FNR) − ln FPR, ln(1 − δ − FPR) − ln FNR)``, which holds with confidence ``1 − α`` (α shared
out over the thresholds, Bonferroni). A bound above the ledger's ε means the accounting is wrong.

Hand-written because no maintained library ships these estimators (the authors' code is research code).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import optimize, stats


def canary_direction(seed: int, index: int, dim: int) -> torch.Tensor:
    """Unit vector ``c_index`` in ``R^dim`` (float32), the same for the same ``(seed, index)``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    z = torch.randn(dim, generator=generator)
    return z / z.norm()


def _delta(eps: float, m1: float, s1: float, m2: float, s2: float) -> float:
    """``δ_{P‖Q}(ε)`` for ``P = N(m1, s1²)``, ``Q = N(m2, s2²)``."""
    a = 0.5 * (s2**-2 - s1**-2)
    b = m1 / s1**2 - m2 / s2**2
    c = 0.5 * ((m2 / s2) ** 2 - (m1 / s1) ** 2) + math.log(s2) - math.log(s1)
    p, q = stats.norm(m1, s1), stats.norm(m2, s2)

    def mass(dist: stats.rv_continuous, lo: float, hi: float) -> float:
        return float(dist.cdf(hi) - dist.cdf(lo))

    if abs(a) < 1e-12 * max(abs(b), 1.0):
        if b == 0:
            return 0.0
        cut = (eps - c) / b
        region = [(cut, math.inf)] if b > 0 else [(-math.inf, cut)]
    else:
        disc = b * b - 4 * a * (c - eps)
        if disc < 0:
            return max(0.0, 1.0 - math.exp(eps)) if a > 0 else 0.0
        r1, r2 = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
        region = [(-math.inf, r1), (r2, math.inf)] if a > 0 else [(r1, r2)]
    return sum(mass(p, lo, hi) - math.exp(eps) * mass(q, lo, hi) for lo, hi in region)


def epsilon_two_gaussians(m1: float, s1: float, m2: float, s2: float, delta: float) -> float:
    """The smallest ε ≥ 0 with which ``N(m1, s1²)`` and ``N(m2, s2²)`` are ``(ε, δ)``-indistinguishable."""
    if s1 <= 0 or s2 <= 0:
        raise ValueError(f"standard deviations must be > 0, got {s1} and {s2}")

    def excess(eps: float) -> float:
        return max(_delta(eps, m1, s1, m2, s2), _delta(eps, m2, s2, m1, s1)) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
        if high > 512:  # e^ε overflows a float past about 709
            return math.inf
    return float(optimize.brentq(excess, 0.0, high, xtol=1e-9))


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, max(math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)), 1e-12)


def estimate_epsilon(
    seen: list[float], unseen: list[float] | None, dim: int, delta: float
) -> tuple[float, float, float]:
    """Andrew et al.'s ε̂ with a 95 % interval ``(estimate, low, high)``, from the cosines of inserted canaries
    (``seen``) against those of directions never inserted (``unseen``; ``None``: the null ``N(0, 1/dim)``).

    The mechanism audited is Gaussian: a canary shifts the statistic's mean and leaves its spread alone, so the
    two are fitted with one pooled variance and ε is that of ``μ``-Gaussian DP with ``μ = (μ̂ − μ̂₀)/σ̂``. Fitting
    two variances instead lets sampling noise in ~100 values into the quadratic term of the log-likelihood
    ratio, which dominates at small δ (a 20 % difference in spread, well within sampling error, doubles ε̂)."""
    if len(seen) < 2:
        raise ValueError("need at least two inserted canaries")
    mean, std = _mean_std(seen)
    if unseen is not None and len(unseen) >= 2:
        m0, s0 = _mean_std(unseen)
        n0 = len(unseen)
        pooled = math.sqrt(((len(seen) - 1) * std**2 + (n0 - 1) * s0**2) / (len(seen) + n0 - 2))
    else:
        m0, pooled, n0 = 0.0, dim**-0.5, math.inf
    mu = max((mean - m0) / pooled, 0.0)
    spread = 1.96 * math.sqrt(1 / len(seen) + 1 / n0 + mu**2 / (2 * (len(seen) + min(n0, 1e9) - 2)))

    def eps(m: float) -> float:
        return epsilon_two_gaussians(0.0, 1.0, max(m, 0.0), 1.0, delta)

    return eps(mu), eps(mu - spread), eps(mu + spread)


def _jeffreys_upper(errors: int, trials: int, alpha: float) -> float:
    return 1.0 if errors >= trials else float(stats.beta.ppf(1 - alpha, errors + 0.5, trials - errors + 0.5))


def epsilon_lower_bound(seen: list[float], unseen: list[float], delta: float, alpha: float = 0.05) -> float:
    """A ``1 − α`` confidence lower bound on ε from scores of inserted (``seen``) and never-inserted canaries.

    Every threshold between the scores is tried, each at ``α / (number of thresholds)``, so choosing the best
    one after the fact keeps the confidence (Bonferroni)."""
    if not seen or not unseen:
        return 0.0
    thresholds = sorted(set(seen) | set(unseen))
    level = alpha / len(thresholds)
    best = 0.0
    for t in thresholds:
        fpr = _jeffreys_upper(sum(u >= t for u in unseen), len(unseen), level)
        fnr = _jeffreys_upper(sum(s < t for s in seen), len(seen), level)
        for num, den in ((1 - delta - fnr, fpr), (1 - delta - fpr, fnr)):
            if num > 0 and den > 0:
                best = max(best, math.log(num) - math.log(den))
    return best


# --- One run, sample level: Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023.
# ``m`` canary rows are each trained on with probability ½. After training the auditor guesses "included" for the
# ``k`` best-scored canaries and "excluded" for the ``k`` worst; with ``v`` of those ``r = 2k`` guesses right,
# (ε, δ)-DP implies P[V ≥ v] ≤ P[Bin(r, e^ε/(1+e^ε)) ≥ v] + 2mδ·α (their Theorem 3 and Appendix D). The largest ε
# this rejects at confidence 1 − p is a lower bound on the ε of the mechanism that ran.

#: Guesses tried, as fractions of the canaries on each side; Bonferroni shares the confidence out over them.
GUESS_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)


def one_run_p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """The probability that ``correct`` or more of ``guesses`` are right under ``(epsilon, delta)``-DP, with
    ``canaries`` canaries in all (Steinke et al.'s Theorem 3 with its δ term)."""
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, q))
    if correct == 0 or delta == 0:
        return min(beta, 1.0)
    # α = max over i = 1..v of P[v − i ≤ Bin(r, q) < v] / i
    i = np.arange(1, correct + 1)
    alpha = float(np.max(np.cumsum(stats.binom.pmf(correct - i, guesses, q)) / i))
    return min(beta + alpha * delta * 2 * canaries, 1.0)


def one_run_epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest ε that ``correct`` right guesses out of ``guesses`` reject at ``confidence`` (0 if none)."""
    p = 1.0 - confidence
    if guesses == 0 or one_run_p_value(canaries, guesses, correct, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0
    while one_run_p_value(canaries, guesses, correct, high, delta) < p:
        low, high = high, high * 2
        if high > 512:
            return math.inf
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if one_run_p_value(canaries, guesses, correct, mid, delta) < p else (low, mid)
    return low


def one_run_audit(
    scores: list[float], included: list[bool], delta: float, confidence: float = 0.95
) -> tuple[float, int, int]:
    """``(ε lower bound, guesses, right guesses)`` from every canary's score (higher: more likely trained on)
    and whether it was in fact included; the best of :data:`GUESS_FRACTIONS`, each at
    ``1 − (1 − confidence)/len(GUESS_FRACTIONS)`` so that picking the best keeps the confidence."""
    if len(scores) != len(included):
        raise ValueError(f"{len(scores)} scores for {len(included)} canaries")
    m = len(scores)
    order = sorted(range(m), key=lambda i: scores[i])
    level = 1.0 - (1.0 - confidence) / len(GUESS_FRACTIONS)
    best = (0.0, 0, 0)
    for fraction in GUESS_FRACTIONS:
        k = min(max(int(m * fraction), 1), m // 2)
        if k == 0:
            continue
        right = sum(included[i] for i in order[m - k :]) + sum(not included[i] for i in order[:k])
        bound = one_run_epsilon_lower_bound(m, 2 * k, right, delta, level)
        if bound > best[0] or best[1] == 0:
            best = (bound, 2 * k, right)
    return best
