"""t-of-n Shamir secret sharing of 16-byte secrets, with pycryptodome's ``Shamir`` (arithmetic in GF(2^128)).

Secure aggregation only shares 16-byte seeds (the mask-key seed and the self-mask seed), exactly the size
this implementation supports, so no hand-written field arithmetic is needed. A share is
``index (2 bytes) ‖ value``.
Shamir shares carry no integrity: a wrong share silently yields a wrong secret, so callers check every
reconstruction against a public commitment.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

SECRET_BYTES = 16
SHARE_BYTES = 2 + SECRET_BYTES


def split_secret(secret: bytes, threshold: int, holders: Sequence[str]) -> dict[str, bytes]:
    """One share per holder (sorted, indices 1..n); any ``threshold`` of them rebuild ``secret``."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 2 <= threshold <= len(holders):
        raise ValueError(f"threshold must be in [2, {len(holders)}], got {threshold}")
    shares = Shamir.split(threshold, len(holders), secret)
    return {
        holder: index.to_bytes(2, "big") + value
        for holder, (index, value) in zip(sorted(holders), shares, strict=True)
    }


def combine_shares(shares: Sequence[bytes], threshold: int) -> bytes:
    """Rebuild a secret from at least ``threshold`` shares (the first ``threshold`` are used)."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares cannot rebuild a secret that needs {threshold}")
    pairs = [(int.from_bytes(s[:2], "big"), s[2:]) for s in shares[:threshold]]
    return Shamir.combine(pairs)
