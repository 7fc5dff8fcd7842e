"""Server-side failure modes: too few parties, tampered shares or ciphertexts, inconsistent messages."""

from __future__ import annotations

import pytest

from mpctf.privacy.errors import IntegrityError, SecureAggregationError
from mpctf.privacy.secagg import SecAggParams

PARAMS = SecAggParams(threshold=3)


def run_until_reveal(make_round, updates, *, drop_before_masked=()):
    r = make_round(5, PARAMS)
    r.advertise()
    r.share()
    r.drop(*drop_before_masked)
    r.mask(updates)
    r.collect()
    r.reveal()
    return r


def test_too_many_dropouts_before_masking_fail_clearly(make_round, updates):
    r = make_round(5, PARAMS)
    r.advertise()
    r.share()
    r.drop("p0", "p1", "p2")
    r.mask(updates)
    with pytest.raises(SecureAggregationError, match=r"only 2 parties sent a masked input.*at least 3"):
        r.collect()


def test_too_few_unmask_replies_fail_clearly(make_round, updates):
    r = make_round(5, PARAMS)
    r.advertise()
    r.share()
    r.mask(updates)
    r.collect()
    r.drop("p0", "p1", "p2")
    r.reveal()
    with pytest.raises(SecureAggregationError, match=r"only 2 parties answered the unmask request"):
        r.result()


def test_too_few_parties_advertising_fail_clearly(make_round):
    r = make_round(2, PARAMS)
    with pytest.raises(SecureAggregationError, match=r"only 2 parties advertised keys.*at least 3"):
        r.advertise()


def test_tampered_self_mask_share_is_detected(make_round, updates):
    r = run_until_reveal(make_round, updates)
    share = bytearray(r.replies[0]["self_mask_shares"]["p3"])
    share[5] ^= 0x01
    r.replies[0]["self_mask_shares"]["p3"] = bytes(share)
    with pytest.raises(
        IntegrityError, match=r"self-mask seed rebuilt for 'p3' does not match its commitment"
    ):
        r.result()


def test_tampered_mask_key_share_of_dropped_party_is_detected(make_round, updates):
    r = run_until_reveal(make_round, updates, drop_before_masked=["p4"])
    assert r.request["dropped"] == ["p4"]
    share = bytearray(r.replies[0]["mask_key_shares"]["p4"])
    share[-1] ^= 0x80
    r.replies[0]["mask_key_shares"]["p4"] = bytes(share)
    with pytest.raises(IntegrityError, match=r"mask key rebuilt for 'p4' does not match its public key"):
        r.result()


def test_masked_input_with_wrong_layout_is_refused(make_round, updates):
    r = make_round(5, PARAMS)
    r.advertise()
    r.share()
    r.mask(updates)
    r.masked[1]["layout"]["shapes"][0] = [8, 4]
    with pytest.raises(SecureAggregationError, match=r"party 'p1' sent tensors laid out differently"):
        r.collect()


def test_messages_from_another_round_or_repeated_are_refused(make_round):
    r = make_round(4, PARAMS)
    ads = [r.parties[n].advertise_keys() for n in r.alive]
    with pytest.raises(SecureAggregationError, match="repeated key advertisement"):
        r.server.collect_keys([*ads, ads[0]])
    ads[1]["round"] = 99
    with pytest.raises(SecureAggregationError, match="is for round 99"):
        r.server.collect_keys(ads)


def test_shares_addressed_to_non_neighbours_are_refused(make_round):
    r = make_round(6, SecAggParams(threshold=2, num_neighbours=2))
    r.advertise()
    shares = [r.parties[n].share_keys(r.roster) for n in r.alive]
    stranger = next(v for v in r.alive if v != "p0" and v not in shares[0]["shares"])
    shares[0]["shares"][stranger] = b"x" * 40
    with pytest.raises(SecureAggregationError, match="not to its neighbours"):
        r.server.route_shares(shares)
