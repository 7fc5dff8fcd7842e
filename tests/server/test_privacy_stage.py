"""The server's and parties' privacy stages through a real backend, with hand-made updates (no model): what the
round loop does around them, in milliseconds."""

from __future__ import annotations

import pytest
import torch

from mpctf.errors import UpdateRejected
from mpctf.messages import Update
from privacy_support import NAMES, Federation, plan, server_for, weighted_mean


def test_secure_aggregation_yields_the_weighted_mean_and_the_server_sees_only_ring_vectors(tmp_path):
    fed = Federation(tmp_path, {"secure_aggregation": {}})
    result = fed.round(server_for(fed))
    expected = weighted_mean(fed.deltas, NAMES)
    for key in expected:
        torch.testing.assert_close(result[key], expected[key], atol=1e-5, rtol=0)
    assert all(
        set(t) == {"secagg.masked"} and t["secagg.masked"].dtype == torch.int32 for t in fed.seen_by_server
    )


def test_secure_aggregation_unmasks_without_a_party_that_dropped_after_sharing_keys(tmp_path):
    fed = Federation(tmp_path, {"secure_aggregation": {}}, crash={"carol"})
    server = server_for(fed)
    result = fed.round(server)
    expected = weighted_mean(fed.deltas, ["alice", "bob"])
    for key in expected:
        torch.testing.assert_close(result[key], expected[key], atol=1e-5, rtol=0)
    assert server.last_metrics["privacy_dropped"] == ["carol"]


def test_ckks_yields_the_weighted_mean_and_the_server_holds_no_secret_key(tmp_path):
    import tenseal as ts

    fed = Federation(tmp_path, {"homomorphic_encryption": {}})
    server = server_for(fed)
    assert not ts.context_from(server.stage("homomorphic_encryption").public_context).has_secret_key()
    result = fed.round(server)
    expected = weighted_mean(fed.deltas, NAMES)
    for key in expected:
        torch.testing.assert_close(result[key], expected[key], atol=1e-6, rtol=0)
    assert all(all(k.startswith("ckks.") for k in t) for t in fed.seen_by_server)


def test_central_dp_without_noise_is_the_uniform_mean_of_the_clipped_updates(tmp_path):
    clip = 0.01
    fed = Federation(tmp_path, {"client_dp": {"noise_multiplier": 0.0, "clip_norm": clip}})
    server = server_for(fed)
    result = fed.round(server)
    norms = [float(torch.cat([t.flatten() for t in u.values()]).norm()) for u in fed.seen_by_server]
    assert max(norms) <= clip * (1 + 1e-5)
    clipped_mean = {k: sum(u[k] for u in fed.seen_by_server) / 3 for k in ("w", "b")}
    for key in clipped_mean:  # σ = 0: the uniform mean of the clipped updates
        torch.testing.assert_close(result[key], clipped_mean[key])
    assert server.last_metrics["dp_epsilon"] == float("inf")


def test_a_hidden_update_of_the_wrong_layout_is_rejected(tmp_path):
    fed = Federation(tmp_path, {"secure_aggregation": {}})
    server = server_for(fed)
    server.strategy.begin_round(1, {"w": torch.zeros(3, 4)})
    server.begin_round(1, NAMES, {p: plan(p) for p in NAMES}, fed.backend)
    bogus = Update("alice", 1, {"secagg.masked": torch.zeros(17, dtype=torch.int32)}, 1, 1)
    bogus.header = {"privacy": {"layout": {"names": ["x"], "shapes": [[17]], "dtypes": ["float32"]}}}
    with pytest.raises(UpdateRejected, match="layout"):
        server.receive_hidden(bogus, {"w": torch.zeros(3, 4)})


def test_the_ledger_and_clip_norm_resume_and_a_ledger_of_other_parameters_is_refused(tmp_path):
    from mpctf.errors import FederationError

    dp = {"noise_multiplier": 1.0, "clip_norm": 0.01, "epsilon_max": 1e6}
    fed = Federation(tmp_path, {"client_dp": {**dp, "adaptive_clipping": {"count_noise_std": 1.0}}})
    server = server_for(fed)
    fed.round(server, 1)
    saved = server.state_dict()
    resumed = server_for(
        Federation(tmp_path, {"client_dp": {**dp, "adaptive_clipping": {"count_noise_std": 1.0}}})
    )
    resumed.load_state_dict(saved)
    was, now = server.stage("client_dp"), resumed.stage("client_dp")
    assert now.accountant.steps == 1 and now.clip_norm == was.clip_norm != 0.01
    assert now.accountant.epsilon() == server.last_metrics["dp_epsilon"]
    other = server_for(Federation(tmp_path, {"client_dp": {**dp, "noise_multiplier": 2.0}}))
    with pytest.raises(FederationError, match="noise_multiplier"):
        other.load_state_dict(saved)
    with pytest.raises(FederationError, match="no privacy ledger"):
        other.load_state_dict(None)


def test_the_round_that_would_exceed_epsilon_max_is_refused_with_the_reason(tmp_path):
    from mpctf.privacy.accountant import epsilon_for

    eps1 = epsilon_for(noise_multiplier=1.0, sampling_rate=1.0, steps=1, delta=1e-5)
    fed = Federation(
        tmp_path, {"client_dp": {"noise_multiplier": 1.0, "clip_norm": 0.01, "epsilon_max": eps1 * 1.01}}
    )
    server = server_for(fed)
    assert server.max_rounds == 1 and server.stop_reason(1) is None
    fed.round(server, 1)
    reason = server.stop_reason(2)
    assert reason is not None and "round 2" in reason and "epsilon_max" in reason


def test_secure_aggregation_with_an_int8_uplink_sums_codes_of_one_public_scale_exactly(tmp_path):
    """int8 under SecAgg: the ring takes the codec's precision (clip_range / 127 per code, stochastic rounding),
    the masked values travel as int16 (8 bits + headroom for 3 parties), and the mean is unbiased."""
    torch.manual_seed(0)  # the stochastic rounding draws from torch's global generator
    fed = Federation(
        tmp_path, {"secure_aggregation": {"clip_range": 0.05}}, communication={"uplink": [{"name": "int8"}]}
    )
    server = server_for(fed)
    results = [fed.round(server, r) for r in range(1, 41)]
    assert all(t["secagg.masked"].dtype == torch.int16 for t in fed.seen_by_server)
    expected = weighted_mean(fed.deltas, NAMES)
    step = 0.05 / 127
    for key in expected:
        one = results[0][key]
        # each party's code is off by less than one step, then the sum is rescaled by the public weights
        assert float((one - expected[key]).abs().max()) <= len(NAMES) * step
        average = sum(r[key] for r in results) / len(results)
        torch.testing.assert_close(average, expected[key], atol=step / 3, rtol=0)  # unbiased
