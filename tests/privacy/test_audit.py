"""Empirical privacy estimation: the formulas against published values, and the in-run audit as a bug detector."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import optimize, stats

from mpctf.privacy.audit import epsilon_lower_bound, epsilon_two_gaussians, estimate_epsilon
from privacy_support import NAMES, Federation, server_for


def test_two_gaussians_matches_the_reference_implementation():
    # google-research/federated one_shot_epe test: mu = std = d^-1/2 against the null, d = 2000, delta = 1e-2
    d = 2000
    assert epsilon_two_gaussians(0, d**-0.5, d**-0.5, d**-0.5, 1e-2) == pytest.approx(2.317789, abs=1e-6)


def test_equal_variances_reduce_to_gaussian_dp():
    mu, delta = 1.0, 1e-5

    def gdp_delta(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    assert epsilon_two_gaussians(0, 1, mu, 1, delta) == pytest.approx(optimize.brentq(gdp_delta, 0, 50))
    assert epsilon_two_gaussians(0, 1, 0, 1, delta) == 0.0


def test_lower_bound_is_zero_for_indistinguishable_scores_and_saturates_for_separated_ones():
    g = torch.Generator().manual_seed(0)
    same = torch.randn(400, generator=g).tolist()
    assert epsilon_lower_bound(same[:200], same[200:], 1e-5) == 0.0
    separated = epsilon_lower_bound([1.0 + i for i in range(100)], [-1.0 - i for i in range(100)], 1e-5)
    assert 2.0 < separated < 5.0  # 100 against 100 cannot prove more


def test_estimate_is_gaussian_dp_of_the_standardised_mean_shift():
    g = torch.Generator().manual_seed(0)
    unseen = (torch.randn(2000, generator=g) * 0.01).tolist()
    seen = (torch.randn(2000, generator=g) * 0.01 + 0.01).tolist()  # mu = 1
    estimate, low, high = estimate_epsilon(seen, unseen, 1000, 1e-5)
    assert low < estimate < high
    assert estimate == pytest.approx(epsilon_two_gaussians(0, 1, 1, 1, 1e-5), rel=0.1)
    closed_form, _, _ = estimate_epsilon([0.03, 0.035, 0.025], None, 1000, 1e-5)  # null N(0, 1/d)
    assert closed_form == pytest.approx(epsilon_two_gaussians(0, 1, 0.03 * 1000**0.5, 1, 1e-5), rel=1e-6)


def big_updates(dim: int = 4000) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return {p: {"w": torch.randn(dim, generator=g)} for p in NAMES}


def audited_run(tmp_path, *, noise: float, rounds: int = 6, break_noise: bool = False, canaries: int = 60):
    privacy = {
        "client_dp": {"noise_multiplier": noise, "clip_norm": 1.0},
        "audit": {"canaries": canaries, "unseen": canaries},
    }
    fed = Federation(tmp_path, privacy, updates=big_updates())
    server = server_for(fed)
    if break_noise:  # a bug: the ledger accounts sigma, the server adds nothing
        server.stage("client_dp").update_noise = 0.0
    for r in range(1, rounds + 1):
        fed.round(server, r)
    return server.last_metrics


def test_the_audit_estimate_matches_the_noise_that_ran_and_stays_under_a_correct_ledger(
    tmp_path, monkeypatch
):
    import secrets

    monkeypatch.setattr(secrets, "randbits", lambda bits: 20261207)  # fixed noise and canaries: no flaky draw
    metrics = audited_run(tmp_path, noise=3.0, canaries=400)
    assert metrics["audit_canaries_inserted"] == 400  # q = 1: every canary in every round
    # R rounds of a canary of norm C against noise sigma*C: mu = sqrt(R) / sigma
    expected = epsilon_two_gaussians(0, 1, 6**0.5 / 3.0, 1, 1e-5)
    low, high = metrics["audit_epsilon_interval"]
    # within twice the 95 % half-width (a 95 % interval alone misses the truth one run in twenty)
    assert abs(metrics["audit_epsilon_estimate"] - expected) <= high - low
    assert not metrics["audit_violated"]
    assert metrics["audit_epsilon_lower_bound"] <= metrics["dp_epsilon"]


def test_the_audit_catches_a_mechanism_that_adds_less_noise_than_the_ledger_accounts(tmp_path):
    metrics = audited_run(tmp_path, noise=20.0, break_noise=True)
    assert metrics["dp_epsilon"] < 1.5
    assert metrics["audit_violated"] and metrics["audit_epsilon_lower_bound"] > metrics["dp_epsilon"]
    assert metrics["privacy_warnings"][0].startswith("privacy accounting violated: round 6")


def test_the_report_says_so_loudly():
    from mpctf.report.guarantee import guarantee_lines

    record = {
        "round": 3,
        "dp_epsilon": 1.0,
        "dp_delta": 1e-5,
        "dp_rounds": 3,
        "audit_epsilon_estimate": 5.0,
        "audit_epsilon_interval": [4.0, 6.0],
        "audit_epsilon_lower_bound": 2.5,
        "audit_canaries_inserted": 100,
        "audit_violated": True,
    }
    text = "\n".join(guarantee_lines({"mechanism": "client-level DP"}, [record], []))
    assert "ε̂ = 5 (95 % interval 4–6), lower bound 2.5" in text
    assert "PRIVACY ACCOUNTING VIOLATED in round(s) 3" in text
