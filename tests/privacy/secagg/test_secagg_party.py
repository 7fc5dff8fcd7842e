"""Party side: what the server sees of one party looks uniform; tampering and protocol abuse fail loudly."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from mpctf.privacy.errors import IntegrityError, SecureAggregationError
from mpctf.privacy.secagg import SecAggParams, SecAggParty, ring

PARAMS = SecAggParams(threshold=3)


def _shared_round(make_round, n=5, params=PARAMS):
    r = make_round(n, params)
    r.advertise()
    r.share()
    return r


def test_one_masked_input_is_indistinguishable_from_uniform(make_round):
    """A structured input (a constant and a ramp) becomes ring values the KS and χ² tests cannot tell from
    uniform; the same tests flag the unmasked encoding, so they have the power to see structure."""
    count = 20_000
    update = {"w": torch.cat([torch.full((count // 2,), 0.25), torch.linspace(-1, 1, count // 2)])}
    r = _shared_round(make_round)
    masked = r.parties["p0"].masked_input(r.inboxes["p0"], update)
    view = ring.from_wire(masked["masked"], PARAMS.bits).to(torch.float64) / 2.0**PARAMS.bits
    assert stats.kstest(view.numpy(), "uniform").pvalue > 0.01
    counts = torch.histc(view, bins=64, min=0.0, max=1.0).numpy()
    assert stats.chisquare(counts).pvalue > 0.01
    plain = ring.encode(update, PARAMS)[0].to(torch.float64) / 2.0**PARAMS.bits
    assert stats.kstest(plain.numpy(), "uniform").pvalue < 1e-6


def test_tampered_share_ciphertext_fails_authentication(make_round, updates):
    r = _shared_round(make_round)
    blob = bytearray(r.inboxes["p1"]["shares"]["p2"])
    blob[20] ^= 0x01
    r.inboxes["p1"]["shares"]["p2"] = bytes(blob)
    with pytest.raises(IntegrityError, match=r"key shares from 'p2' to 'p1' failed authentication"):
        r.parties["p1"].masked_input(r.inboxes["p1"], updates["p1"])


def test_misrouted_share_ciphertext_fails_authentication(make_round, updates):
    r = _shared_round(make_round)
    # the server passes off p2's shares for p3 as if p4 had sent them to p3
    r.inboxes["p3"]["shares"]["p4"] = r.inboxes["p3"]["shares"]["p2"]
    with pytest.raises(IntegrityError, match=r"from 'p4' to 'p3' failed authentication"):
        r.parties["p3"].masked_input(r.inboxes["p3"], updates["p3"])


def test_roster_without_the_partys_own_keys_is_refused(make_round):
    r = make_round(4, PARAMS)
    roster = r.advertise()
    roster["parties"]["p0"]["mask_key"], roster["parties"]["p1"]["mask_key"] = (
        roster["parties"]["p1"]["mask_key"],
        roster["parties"]["p0"]["mask_key"],
    )
    with pytest.raises(SecureAggregationError, match="roster does not carry this party's own keys"):
        r.parties["p0"].share_keys(roster)


def test_roster_smaller_than_the_threshold_is_refused():
    party = SecAggParty("a", PARAMS, 0)
    advert = party.advertise_keys()
    roster = {"round": 0, "parties": {"a": {k: advert[k] for k in ("enc_key", "mask_key", "commitment")}}}
    with pytest.raises(SecureAggregationError, match="1 holders for its secrets, threshold 3"):
        party.share_keys(roster)


def test_party_never_reveals_both_secrets_of_one_party(make_round, updates):
    r = _shared_round(make_round)
    r.mask(updates)
    request = r.collect()
    bad = {**request, "dropped": ["p2"]}  # p2 also listed as survivor
    with pytest.raises(SecureAggregationError, match=r"\['p2'\] listed both alive and dropped"):
        r.parties["p0"].unmask(bad)


def test_reveal_one_secret_per_holder(make_round, updates):
    r = _shared_round(make_round)
    r.drop("p4")
    r.mask(updates)
    request = r.collect()
    reply = r.parties["p0"].unmask(request)
    assert set(reply["self_mask_shares"]) == {"p0", "p1", "p2", "p3"}
    assert set(reply["mask_key_shares"]) == {"p4"}


def test_calls_out_of_order_are_refused():
    party = SecAggParty("a", PARAMS, 0)
    with pytest.raises(SecureAggregationError, match="'share' called during stage 'advertise'"):
        party.share_keys({"round": 0, "parties": {}})
    party.advertise_keys()
    with pytest.raises(SecureAggregationError, match="'advertise' called during stage 'share'"):
        party.advertise_keys()


def test_ring_overflow_is_refused_before_masking(make_round):
    params = SecAggParams(threshold=3, bits=16, scale=2.0**12, clip_range=4.0)
    r = _shared_round(make_round, params=params)
    with pytest.raises(ValueError, match="does not fit in Z_2\\^16"):
        r.parties["p0"].masked_input(r.inboxes["p0"], {"w": torch.zeros(3)})


def test_clamped_values_are_counted(make_round):
    r = _shared_round(make_round)
    r.parties["p0"].masked_input(r.inboxes["p0"], {"w": torch.tensor([0.5, 1.5, -2.0, 0.0])})
    assert r.parties["p0"].clamped == 2
