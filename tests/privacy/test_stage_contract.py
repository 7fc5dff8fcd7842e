"""Every registered privacy stage passes the same checks: a new mechanism adds a row to ROWS.

A row is the ``privacy:`` section that enables the stage alone (or with what it needs), the aggregate the strategy
must receive after one round of the real party and server halves, and the tolerance of that aggregate.
"""

from __future__ import annotations

import pytest
import torch

from mpctf.messages import RoundTask
from mpctf.privacy.config import PrivacyConfig
from mpctf.privacy.stages import STAGES, PartyContext, RunInfo
from privacy_support import NAMES, Federation, server_for, weighted_mean

CLIP = 0.01
ROWS = {
    "client_dp": ({"client_dp": {"noise_multiplier": 0.0, "clip_norm": CLIP}}, "clipped_mean", 1e-6),
    "secure_aggregation": ({"secure_aggregation": {}}, "weighted_mean", 1e-5),
    "homomorphic_encryption": ({"homomorphic_encryption": {}}, "weighted_mean", 1e-6),
    "audit": (
        {"client_dp": {"noise_multiplier": 0.0, "clip_norm": CLIP}, "audit": {"canaries": 4, "unseen": 4}},
        "clipped_mean",
        1e-6,
    ),
    "sample_dp": ({"sample_dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}, "weighted_mean", 1e-7),
}


def test_every_registered_stage_has_a_row_and_a_config_section():
    assert set(ROWS) == set(STAGES)
    assert set(STAGES) == set(PrivacyConfig.model_fields)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_stage_declares_what_it_is(name):
    stage = STAGES.get(name)
    assert stage.traits.title and isinstance(stage.order, int)
    assert all(isinstance(op, str) for op in stage.ops)
    others = {op for other in STAGES if other != name for op in STAGES.get(other).ops}
    assert not stage.ops & others, "each op is answered by one stage"


@pytest.mark.parametrize("name", sorted(ROWS))
def test_a_round_through_the_stage_yields_the_aggregate_it_promises(name, tmp_path):
    privacy, expected_kind, tolerance = ROWS[name]
    fed = Federation(tmp_path, privacy)
    server = server_for(fed)
    result = fed.round(server)
    if expected_kind == "clipped_mean":
        expected = {k: sum(u[k] for u in fed.seen_by_server) / len(NAMES) for k in result}
    else:
        expected = weighted_mean(fed.deltas, NAMES)
    for key in expected:
        torch.testing.assert_close(result[key], expected[key], atol=tolerance, rtol=0)
    assert server.last_metrics["privacy_exchange_bytes_down"] >= 0


@pytest.mark.parametrize("name", sorted(ROWS))
def test_the_party_half_leaves_an_update_alone_without_instructions(name):
    party = STAGES.get(name).party_stage("alice", None)
    task = RoundTask(1, {}, {"op": "train"})
    delta = {"w": torch.ones(2, 3)}
    ctx = PartyContext(task, 1, 1, hidden=False)
    assert party.local_dp() is None
    if not STAGES.get(name).traits.hides_updates:  # a hiding stage is only asked when the task names it
        torch.testing.assert_close(party.protect(dict(delta), {"clip_norm": 1e9}, ctx)["w"], delta["w"])


@pytest.mark.parametrize("name", sorted(ROWS))
def test_stage_state_round_trips_and_refuses_another_stages_state(name, tmp_path):
    privacy, _, _ = ROWS[name]
    params = getattr(PrivacyConfig.model_validate(privacy), name)
    run = RunInfo(num_parties=3, parties_per_round=None, min_parties=1)
    stage, fresh = STAGES.get(name)(params, run), STAGES.get(name)(params, run)
    fresh.load_state_dict(stage.state_dict())
    assert fresh.state_dict() == stage.state_dict()
    other = next(n for n in STAGES if n != name)
    with pytest.raises(ValueError, match=other):
        stage.load_state_dict({"stage": other})
