"""Cryptographic primitives shared by secure aggregation and HE key distribution, all from ``cryptography``.

- key agreement: X25519, with HKDF-SHA256 turning the shared secret into a key bound to a purpose (``info``);
- authenticated encryption: AES-256-GCM, a fresh random 96-bit nonce per message, prefixed to the ciphertext;
- pseudo-random generator: AES-256-CTR keystream read as ring elements (values uniform in ``[0, 2^bits)``);
- sealing: anonymous public-key encryption (ephemeral X25519 + HKDF + AES-GCM) for sending a secret to one
  recipient through an untrusted relay.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mpctf.privacy.errors import IntegrityError

KEY_BYTES = 32
NONCE_BYTES = 12


def hkdf(secret: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) without salt: ``secret`` is already uniformly random or a DH output."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def x25519_from_seed(seed: bytes) -> X25519PrivateKey:
    """A deterministic X25519 key from a short random seed.

    Secure aggregation shares the *seed* with Shamir (16 bytes fit one pycryptodome share) instead of the
    32-byte private key; the key keeps the seed's 128-bit security.
    """
    return X25519PrivateKey.from_private_bytes(hkdf(seed, b"mpctf x25519 key from seed"))


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key both ends derive from their X25519 exchange, separated by purpose ``info``."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
    except ValueError as exc:
        raise IntegrityError(f"malformed X25519 public key ({len(peer_public)} bytes): {exc}") from None
    return hkdf(private.exchange(peer), info)


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM; ``aad`` binds the ciphertext to its context (sender, recipient, round)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    """Inverse of :func:`aead_encrypt`; raises :class:`IntegrityError` naming ``what`` on any tampering."""
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise IntegrityError(
            f"{what} failed authentication (AES-GCM tag mismatch): it was altered or misrouted"
        ) from None


def seal(recipient_public: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt for the holder of ``recipient_public`` only: ephemeral public key ‖ AES-GCM ciphertext."""
    ephemeral = X25519PrivateKey.generate()
    key = agree(ephemeral, recipient_public, b"mpctf sealed box" + aad)
    return public_bytes(ephemeral) + aead_encrypt(key, plaintext, aad)


def open_sealed(recipient: X25519PrivateKey, blob: bytes, aad: bytes = b"") -> bytes:
    """Inverse of :func:`seal`."""
    key = agree(recipient, blob[:KEY_BYTES], b"mpctf sealed box" + aad)
    return aead_decrypt(key, blob[KEY_BYTES:], aad, "sealed message")


def prg_ring(seed: bytes, count: int, bits: int) -> torch.Tensor:
    """``count`` pseudo-random ring elements in ``[0, 2^bits)`` (int64) expanded from a 32-byte ``seed``.

    AES-256-CTR with a zero nonce is safe here because every seed is used for exactly one expansion. Each
    value takes 8 keystream bytes and keeps the low ``bits``: uniform because 2^bits divides 2^64.
    """
    if len(seed) != KEY_BYTES:
        raise ValueError(f"PRG seed must be {KEY_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * count)) + encryptor.finalize()
    words = np.frombuffer(stream, dtype="<u8") & np.uint64((1 << bits) - 1)
    return torch.from_numpy(words.astype(np.int64))
