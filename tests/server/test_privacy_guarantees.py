"""Regression tests: the ledger accounts for the mechanism that actually ran (each failed on the code before it).

Every test builds the real server and party privacy stages around hand-made updates (no model), so a guarantee
is checked against what the code does, not against the parameters it was given.
"""

from __future__ import annotations

import collections
import math

import pytest
import torch

from mpctf.aggregation.fedavg import FedAvg
from mpctf.privacy.accountant import epsilon_for
from mpctf.privacy.dp import global_l2_norm
from mpctf.server.loop import select_parties
from privacy_support import NAMES, Federation, server_for

DP = {"noise_multiplier": 1.0, "clip_norm": 0.01}


def spy_count(server, monkeypatch) -> list[tuple[float, object]]:
    """What the adaptive clipper is handed each round: (sum of indicators, the generator it noises with)."""
    seen: list[tuple[float, object]] = []
    update = server.stage("client_dp").clipper.update

    def record(centred_sum, num_parties, generator):
        seen.append((centred_sum, generator))
        return update(centred_sum, num_parties, generator)

    monkeypatch.setattr(server.stage("client_dp").clipper, "update", record)
    return seen


def test_one_party_moves_the_adaptive_clipping_count_by_at_most_half(tmp_path, monkeypatch):
    """The count's noise is calibrated to sensitivity ½ (multiplier 2σ_b): one party's indicator may move the
    released sum by ½, not by 1 (an uncentred 0/1 bit, which under-reported ε: 19.05 vs 27.52 for q=1, 10 rounds)."""
    adaptive = {"client_dp": {**DP, "adaptive_clipping": {"count_noise_std": 1.0}}}
    sums = []
    for crash in (set(), {"carol"}):  # carol's unclipped update in the round, then carol absent
        fed = Federation(tmp_path, adaptive, crash=crash)
        fed.deltas["carol"] = {k: v * 1e-6 for k, v in fed.deltas["carol"].items()}
        server = server_for(fed)
        seen = spy_count(server, monkeypatch)
        fed.round(server)
        sums.append(seen[0][0])
    assert sums == pytest.approx([-0.5, -1.0])  # alice and bob clipped (−½ each), carol +½ or nothing


def test_a_party_cannot_widen_the_count_by_reporting_an_out_of_range_indicator(tmp_path, monkeypatch):
    fed = Federation(tmp_path, {"client_dp": {**DP, "adaptive_clipping": {"count_noise_std": 1.0}}})
    server = server_for(fed)
    seen = spy_count(server, monkeypatch)
    honest = fed.parties["alice"].protect

    def lying(task, delta, **kw):
        tensors, header, metrics = honest(task, delta, **kw)
        return tensors, header, {**metrics, "dp_unclipped": 1000.0}

    fed.parties["alice"].protect = lying
    fed.round(server)
    assert seen[0][0] == pytest.approx(0.5 - 0.5 - 0.5)


def test_the_sampling_rate_is_that_of_the_parties_reachable_in_the_round(tmp_path):
    """3 configured parties, 2 per round, only 2 reachable: both are in the round, so q = 1, not 2/3."""
    fed = Federation(tmp_path, {"client_dp": DP}, federation={"parties_per_round": 2})
    server = server_for(fed)
    fed.round(server, 1, selected=["alice", "bob"], reachable=2)
    assert server.last_metrics["dp_sampling_rate"] == 1.0
    fed.round(server, 2, selected=["alice", "carol"], reachable=3)
    assert server.last_metrics["dp_sampling_rate"] == pytest.approx(2 / 3)
    both = epsilon_for(noise_multiplier=1.0, sampling_rate=1.0, steps=1, delta=1e-5)
    assert server.last_metrics["dp_epsilon"] > both  # round 1 at q=1, round 2 at q=2/3
    assert server.stage("client_dp").accountant.history == [[1.0, 1], [2 / 3, 1]]
    assert server.last_metrics["dp_epsilon_known_selection"] == pytest.approx(
        epsilon_for(noise_multiplier=1.0, sampling_rate=1.0, steps=2, delta=1e-5)
    )


def test_the_budget_check_uses_the_rate_the_next_round_will_have(tmp_path):
    eps_sampled = epsilon_for(noise_multiplier=1.0, sampling_rate=2 / 3, steps=1, delta=1e-5)
    budget = {**DP, "epsilon_max": eps_sampled * 1.01}
    fed = Federation(tmp_path, {"client_dp": budget}, federation={"parties_per_round": 2})
    server = server_for(fed)
    assert server.stop_reason(1, reachable=3) is None
    assert "epsilon_max" in server.stop_reason(1, reachable=2)  # q = 1 costs more than the budget


def test_dp_with_sampling_draws_a_selection_nobody_can_replay(tmp_path):
    fed = Federation(tmp_path, {"client_dp": DP}, federation={"parties_per_round": 2})
    assert server_for(fed).secret_selection
    assert server_for(fed).setup(fed.backend)["selection"] == "os_csprng"
    assert not server_for(Federation(tmp_path, {"client_dp": DP})).secret_selection  # everyone, every round
    parties = [f"p{i}" for i in range(10)]
    seeded = {tuple(select_parties(parties, 3, 0, 5)) for _ in range(20)}
    secret = collections.Counter(tuple(select_parties(parties, 3, 0, 5, secret=True)) for _ in range(200))
    assert len(seeded) == 1 and len(secret) > 50


def test_central_dp_clips_at_the_server_whatever_the_party_config_says(tmp_path):
    """A party whose own config has no client_dp still clips (it follows the task), and a party that ignores the
    instructions altogether is clipped by the server: the sum's sensitivity stays C."""
    clip = DP["clip_norm"]
    fed = Federation(tmp_path, {"client_dp": {**DP, "noise_multiplier": 0.0}}, party_privacy={}, scale=100.0)
    server = server_for(fed)
    seen_before = []
    honest = fed.parties["carol"].protect

    def unclipped(task, delta, **kw):
        _, header, metrics = honest(task, delta, **kw)
        seen_before.append(global_l2_norm(delta))
        return {k: v.clone() for k, v in delta.items()}, header, metrics  # sends the raw update

    fed.parties["carol"].protect = unclipped
    result = fed.round(server)
    honest_norms = [global_l2_norm(u) for u in fed.seen_by_server[:2]]
    assert max(honest_norms) <= clip * (1 + 1e-5)
    assert seen_before[0] > 10 * clip
    assert global_l2_norm(result) <= clip * (1 + 1e-5)  # the mean of three updates of norm ≤ C
    assert server.last_metrics["dp_server_clipped"] == ["carol"]


def test_distributed_adaptive_clipping_has_the_parties_noise_the_count(tmp_path, monkeypatch):
    """With secure aggregation nobody, the server included, may see the exact number of unclipped updates."""
    privacy = {
        "client_dp": {**DP, "mode": "distributed", "adaptive_clipping": {"count_noise_std": 2.0}},
        "secure_aggregation": {},
    }
    fed = Federation(tmp_path, privacy)
    server = server_for(fed)
    seen = spy_count(server, monkeypatch)
    fed.round(server)
    centred_sum, generator = seen[0]
    assert generator is None  # the server adds no noise of its own
    assert not math.isclose(centred_sum * 2, round(centred_sum * 2), abs_tol=1e-3)  # not k − m/2


def test_central_noise_has_std_sigma_c_over_m(tmp_path):
    sigma, clip = 2.0, 0.01
    fed = Federation(tmp_path, {"client_dp": {"noise_multiplier": sigma, "clip_norm": clip}})
    server = server_for(fed)
    residuals = []
    for r in range(1, 31):
        before = len(fed.seen_by_server)
        result = fed.round(server, r)
        sent = fed.seen_by_server[before:]
        mean = {k: sum(u[k] for u in sent) / len(NAMES) for k in result}
        residuals.append(torch.cat([(result[k] - mean[k]).flatten() for k in result]))
    std = float(torch.cat(residuals).std())
    assert std == pytest.approx(sigma * clip / len(NAMES), rel=0.12)


def test_the_report_states_the_guarantee_from_what_the_run_recorded(tmp_path):
    from mpctf.report.guarantee import guarantee_lines

    privacy = {"client_dp": {**DP, "mode": "distributed"}, "secure_aggregation": {}}
    fed = Federation(tmp_path, privacy, federation={"parties_per_round": 2})
    server = server_for(fed)
    setup = {"event": "privacy", **server.setup(fed.backend)}
    fed.round(server, 1, selected=["alice", "bob"], reachable=3)
    rounds = [{"round": 1, **server.last_metrics}]
    text = " ".join(guarantee_lines(setup, rounds, []))
    eps, known = server.last_metrics["dp_epsilon"], server.last_metrics["dp_epsilon_known_selection"]
    assert f"party-level (ε = {eps:.3g}, δ = 1e-05) after 1 rounds" in text
    assert "selection stays secret" in text and "honest-but-curious server" in text and f"{known:.3g}" in text
    clamped = guarantee_lines(setup, rounds, [{"secagg_clamped": 3.0}])
    assert any(line.startswith("Warning: some values were clamped") for line in clamped)


@pytest.mark.parametrize(
    ("privacy", "title"),
    [
        ({"secure_aggregation": {}}, "Secure aggregation"),
        ({"homomorphic_encryption": {}}, "Homomorphic encryption"),
    ],
)
def test_without_dp_the_report_says_what_hiding_alone_protects(tmp_path, privacy, title):
    """Read from the setup record the run wrote (the mechanism's name is not parsed: CKKS was once missed)."""
    from mpctf.report.guarantee import guarantee_lines
    from mpctf.server.privacy import ServerPrivacy

    fed = Federation(tmp_path, privacy)
    server = ServerPrivacy.create(fed.config, FedAvg())
    text = " ".join(guarantee_lines({"event": "privacy", **server.setup(fed.backend)}, [], []))
    assert f"Guarantee: no differential privacy. {title} keeps each party's update" in text
    assert "learns only each round's sum" in text
