"""Homomorphic aggregation with CKKS (Cheon, Kim, Kim, Song, 2017) through TenSEAL.

All parties hold one secret CKKS context; the server holds only its public part (no secret key), so it can add
ciphertexts and multiply them by plaintext weights but never decrypt:

    party k:   c_k = Enc(x_k)                      (x_k flattened, cut into chunks of ``slots`` values)
    server:    c   = Σ_k w_k · c_k                 (ciphertext additions and plaintext multiplications)
    parties:   Dec(c) ≈ Σ_k w_k x_k                 (CKKS is approximate: error ≈ 2^-(scale_bits - 20))

Threat model: an honest-but-curious server that does not collude with any party. Any party can decrypt what it
sees, so the server must never forward one party's ciphertext to another. Decrypted results that flow back to
the server are CKKS decryptions, which can leak the secret key to someone who also holds the ciphertext
(Li & Micciancio 2021); :meth:`CkksParty.decrypt` rounds to float32, which limits but does not remove this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import tenseal as ts
import torch

from mpctf.messages import NamedTensors, pack, unpack
from mpctf.privacy.ckks_params import CkksParams
from mpctf.privacy.layout import TensorLayout, flatten, unflatten


def create_secret_context(params: CkksParams) -> bytes:
    """A fresh CKKS context with its secret key, serialised (for the parties only)."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    context.global_scale = 2.0**params.scale_bits
    return context.serialize(save_secret_key=True)


def public_context(secret_context: bytes) -> bytes:
    """The same context without its secret key: what the server gets."""
    context = ts.context_from(secret_context)
    context.make_context_public()
    return context.serialize()


@dataclass
class EncryptedUpdate:
    """One party's (or the aggregate's) ciphertext chunks and the layout to rebuild named tensors."""

    layout: TensorLayout
    chunks: list[bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)

    def to_bytes(self) -> bytes:
        """Wire form: each chunk a uint8 tensor, the layout in the header."""
        tensors = {
            f"c{i:06d}": torch.frombuffer(bytearray(c), dtype=torch.uint8) for i, c in enumerate(self.chunks)
        }
        return pack(tensors, {"kind": "ckks", "layout": self.layout.to_json()})

    @classmethod
    def from_bytes(cls, payload: bytes) -> EncryptedUpdate:
        tensors, header = unpack(payload)
        if header.get("kind") != "ckks":
            raise ValueError("payload is not a CKKS-encrypted update")
        chunks = [tensors[k].numpy().tobytes() for k in sorted(tensors)]
        return cls(layout=TensorLayout.from_json(header["layout"]), chunks=chunks)


class CkksParty:
    """A party's encrypt/decrypt half; built from the shared secret context."""

    def __init__(self, secret_context: bytes, params: CkksParams) -> None:
        self.params = params
        self._context = ts.context_from(secret_context)
        if not self._context.has_secret_key():
            raise ValueError("a party needs the secret CKKS context; this one holds no secret key")

    def encrypt(self, tensors: NamedTensors) -> EncryptedUpdate:
        """Flatten (sorted names, float64) and encrypt in chunks of ``slots`` values."""
        flat, layout = flatten({k: v.detach().cpu() for k, v in tensors.items()}, torch.float64)
        values = flat.numpy()
        slots = self.params.slots
        chunks = [
            ts.ckks_vector(self._context, values[i : i + slots]).serialize()
            for i in range(0, len(values), slots)
        ]
        return EncryptedUpdate(layout=layout, chunks=chunks)

    def decrypt(self, update: EncryptedUpdate) -> NamedTensors:
        """Decrypt an aggregate; float entries come back as float32."""
        pieces = [ts.ckks_vector_from(self._context, c).decrypt() for c in update.chunks]
        flat = torch.tensor([v for piece in pieces for v in piece], dtype=torch.float64)
        return unflatten(flat.to(torch.float32), update.layout, dtype=torch.float32)


def aggregate_encrypted(
    public_ctx: bytes, updates: list[EncryptedUpdate], weights: list[float] | None = None
) -> EncryptedUpdate:
    """Server side: ``Σ_k w_k · c_k`` chunk by chunk, without the secret key.

    Pass normalised weights (``w_k / Σ w``) to get the weighted mean directly; ``None`` sums with weight 1.
    """
    if not updates:
        raise ValueError("nothing to aggregate")
    if weights is not None and len(weights) != len(updates):
        raise ValueError(f"{len(weights)} weights for {len(updates)} updates")
    layout = updates[0].layout
    if any(u.layout != layout for u in updates):
        raise ValueError("encrypted updates have different layouts")
    context = ts.context_from(public_ctx)
    summed: list[Any] = []
    for k, update in enumerate(updates):
        for i, chunk in enumerate(update.chunks):
            vector = ts.ckks_vector_from(context, chunk)
            if weights is not None:
                vector = vector * float(weights[k])
            if k == 0:
                summed.append(vector)
            else:
                summed[i] += vector
    return EncryptedUpdate(layout=layout, chunks=[v.serialize() for v in summed])


@dataclass
class HeOverhead:
    """Per-round cost of CKKS aggregation against sending float32 in the clear."""

    num_values: int
    num_parties: int
    encrypt_s_per_party: float
    aggregate_s: float
    decrypt_s: float
    plain_bytes_per_party: int
    encrypted_bytes_per_party: int
    public_context_bytes: int
    max_abs_error: float

    @property
    def size_ratio(self) -> float:
        return self.encrypted_bytes_per_party / self.plain_bytes_per_party


def measure_overhead(num_values: int, num_parties: int, params: CkksParams, seed: int = 0) -> HeOverhead:
    """Encrypt ``num_parties`` random float32 updates, aggregate them, decrypt: times, sizes and error."""
    generator = torch.Generator().manual_seed(seed)
    updates = [{"w": torch.randn(num_values, generator=generator) * 0.01} for _ in range(num_parties)]
    secret = create_secret_context(params)
    public = public_context(secret)
    party = CkksParty(secret, params)
    start = time.perf_counter()
    encrypted = [party.encrypt(u) for u in updates]
    encrypt_s = (time.perf_counter() - start) / num_parties
    start = time.perf_counter()
    aggregate = aggregate_encrypted(public, encrypted)
    aggregate_s = time.perf_counter() - start
    start = time.perf_counter()
    result = party.decrypt(aggregate)["w"]
    decrypt_s = time.perf_counter() - start
    expected = torch.stack([u["w"] for u in updates]).sum(0)
    return HeOverhead(
        num_values=num_values,
        num_parties=num_parties,
        encrypt_s_per_party=encrypt_s,
        aggregate_s=aggregate_s,
        decrypt_s=decrypt_s,
        plain_bytes_per_party=4 * num_values,
        encrypted_bytes_per_party=encrypted[0].nbytes,
        public_context_bytes=len(public),
        max_abs_error=float((result - expected).abs().max()),
    )
