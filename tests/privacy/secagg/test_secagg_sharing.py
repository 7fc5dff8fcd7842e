from __future__ import annotations

import itertools
import os

import pytest

from mpctf.privacy.secagg.sharing import SHARE_BYTES, combine_shares, split_secret


def test_every_threshold_subset_rebuilds_the_secret():
    secret = os.urandom(16)
    shares = split_secret(secret, 3, ["e", "a", "c", "b", "d"])
    assert sorted(shares) == ["a", "b", "c", "d", "e"]
    assert all(len(s) == SHARE_BYTES for s in shares.values())
    assert shares["a"][:2] == (1).to_bytes(2, "big")  # indices follow sorted holder names
    for subset in itertools.combinations(shares.values(), 3):
        assert combine_shares(list(subset), 3) == secret


def test_fewer_than_threshold_is_refused():
    shares = split_secret(os.urandom(16), 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 shares cannot rebuild a secret that needs 3"):
        combine_shares([shares["a"], shares["b"]], 3)


@pytest.mark.parametrize(
    ("secret", "threshold", "match"), [(b"short", 2, "16 bytes"), (bytes(16), 4, r"\[2, 3\]")]
)
def test_bad_arguments(secret, threshold, match):
    with pytest.raises(ValueError, match=match):
        split_secret(secret, threshold, ["a", "b", "c"])
