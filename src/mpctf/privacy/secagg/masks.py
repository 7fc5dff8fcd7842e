"""The masks of secure aggregation, computed identically by a party (to add) and the server (to remove).

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning"), party ``u``
sends, in the ring ``Z_2^bits``,

    y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} sign(u, v) · PRG(s_{u,v}),    sign(u, v) = +1 if u < v else −1

where ``b_u`` is a fresh self-mask seed and ``s_{u,v}`` the X25519 agreement of ``u``'s and ``v``'s mask keys.
Pairwise masks cancel in ``Σ_u y_u``; the server removes the self masks of survivors and the pairwise masks of
parties that dropped after sharing their keys, from secrets rebuilt out of Shamir shares.
"""

from __future__ import annotations

import hashlib

import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mpctf.privacy.crypto import agree, hkdf, prg_ring


def _round_info(label: bytes, round_num: int) -> bytes:
    return label + b"|" + round_num.to_bytes(8, "big")


def sign(u: str, v: str) -> int:
    """+1 for the smaller name of the pair, −1 for the larger: the two masks cancel."""
    return 1 if u < v else -1


def self_mask(seed: bytes, count: int, bits: int, round_num: int) -> torch.Tensor:
    """``PRG(b_u)``."""
    return prg_ring(hkdf(seed, _round_info(b"mpctf secagg self mask", round_num)), count, bits)


def pairwise_mask(
    own_mask_key: X25519PrivateKey, peer_mask_public: bytes, count: int, bits: int, round_num: int
) -> torch.Tensor:
    """``PRG(s_{u,v})``: both ends get the same vector."""
    seed = agree(own_mask_key, peer_mask_public, _round_info(b"mpctf secagg pairwise mask", round_num))
    return prg_ring(seed, count, bits)


def commitment(self_mask_seed: bytes) -> bytes:
    """Public SHA-256 commitment to ``b_u`` (128 random bits), so a wrongly rebuilt seed is detected."""
    return hashlib.sha256(b"mpctf secagg self-mask commitment|" + self_mask_seed).digest()


def share_key(own_enc_key: X25519PrivateKey, peer_enc_public: bytes) -> bytes:
    """AES-GCM key protecting the shares ``u`` sends to ``v`` through the server."""
    return agree(own_enc_key, peer_enc_public, b"mpctf secagg share encryption")


def share_aad(round_num: int, sender: str, recipient: str) -> bytes:
    """Associated data binding a share ciphertext to its round, sender and recipient."""
    return _round_info(b"mpctf secagg share", round_num) + b"|" + sender.encode() + b"->" + recipient.encode()
