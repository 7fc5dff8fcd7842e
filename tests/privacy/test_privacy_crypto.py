from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mpctf.privacy import crypto
from mpctf.privacy.errors import IntegrityError


def test_agreement_is_symmetric_and_purpose_bound():
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ab = crypto.agree(a, crypto.public_bytes(b), b"x")
    assert ab == crypto.agree(b, crypto.public_bytes(a), b"x")
    assert ab != crypto.agree(b, crypto.public_bytes(a), b"y")
    assert len(ab) == 32


def test_key_from_seed_is_deterministic():
    assert crypto.public_bytes(crypto.x25519_from_seed(b"s" * 16)) == crypto.public_bytes(
        crypto.x25519_from_seed(b"s" * 16)
    )
    assert crypto.public_bytes(crypto.x25519_from_seed(b"s" * 16)) != crypto.public_bytes(
        crypto.x25519_from_seed(b"t" * 16)
    )


def test_aead_detects_tampering_and_wrong_context():
    key = bytes(range(32))
    blob = crypto.aead_encrypt(key, b"secret", b"ctx")
    assert crypto.aead_decrypt(key, blob, b"ctx", "msg") == b"secret"
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(IntegrityError, match="msg failed authentication"):
        crypto.aead_decrypt(key, flipped, b"ctx", "msg")
    with pytest.raises(IntegrityError):
        crypto.aead_decrypt(key, blob, b"other", "msg")


def test_sealed_box_opens_only_for_recipient():
    recipient, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    sealed = crypto.seal(crypto.public_bytes(recipient), b"ckks secret context", b"run-1")
    assert crypto.open_sealed(recipient, sealed, b"run-1") == b"ckks secret context"
    with pytest.raises(IntegrityError):
        crypto.open_sealed(other, sealed, b"run-1")
    with pytest.raises(IntegrityError):
        crypto.open_sealed(recipient, sealed, b"run-2")


def test_prg_is_deterministic_and_in_range():
    seed = bytes(32)
    first = crypto.prg_ring(seed, 1000, 20)
    assert first.equal(crypto.prg_ring(seed, 1000, 20))
    assert int(first.min()) >= 0 and int(first.max()) < 2**20
    assert not first.equal(crypto.prg_ring(bytes([1]) + bytes(31), 1000, 20))
    # prefix property of a stream cipher: a shorter expansion is a prefix of a longer one
    assert crypto.prg_ring(seed, 10, 20).equal(first[:10])
