"""The messages of the privacy exchanges a round needs beside training, as bytes the runtimes carry unread.

A request is a :class:`~mpctf.messages.RoundTask` whose ``op`` names the exchange; blobs (secure-aggregation
messages, CKKS contexts and ciphertexts) travel as uint8 tensors in its ``state``. A reply is
``pack(blobs, {"kind": "privacy", "op": ...})``. The same bytes go through the local and the Flower backend,
exactly like a training task, so no runtime needs to know these exchanges exist.

Who holds what (the wiring's decisions, see ``docs/privacy.md``):

- secure aggregation: every selected party holds its own round keys and seeds; the server routes messages;
- CKKS: the first party (by name) creates the secret context and seals it to every other party's X25519 key;
  the server gets only the public context, so it adds ciphertexts but cannot decrypt; one surviving party
  decrypts the round's sum for the server.
"""

from __future__ import annotations

from typing import Any

import torch

from mpctf.messages import NamedTensors, RoundTask, pack, unpack

SECAGG_ADVERTISE = "secagg_advertise"
SECAGG_SHARE = "secagg_share"
SECAGG_UNMASK = "secagg_unmask"
HE_KEY = "he_key"
HE_CONTEXT = "he_context"
HE_INSTALL = "he_install"
HE_DECRYPT = "he_decrypt"

#: Tensor names of a hidden update inside :class:`~mpctf.messages.Update` (never a trainable-state key).
MASKED = "secagg.masked"
CKKS_PREFIX = "ckks."
#: Extra coordinate appended to a masked update: the party's adaptive-clipping indicator ``b_k``.
UNCLIPPED = "privacy.unclipped"


def to_tensor(blob: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (how blobs ride inside safetensors messages)."""
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)


def to_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().numpy().tobytes()


def request(op: str, round_num: int, blobs: dict[str, bytes] | None = None, **fields: Any) -> bytes:
    """Server → party: one exchange's request."""
    state = {name: to_tensor(blob) for name, blob in (blobs or {}).items()}
    return RoundTask(round_num, state, {"op": op, **fields}).to_bytes()


def request_blobs(task: RoundTask) -> dict[str, bytes]:
    """The blobs of a request, back as bytes."""
    return {name: to_bytes(t) for name, t in task.state.items()}


def reply(op: str, blobs: dict[str, bytes] | None = None, **fields: Any) -> bytes:
    """Party → server: one exchange's answer."""
    return pack({n: to_tensor(b) for n, b in (blobs or {}).items()}, {"kind": "privacy", "op": op, **fields})


def read_reply(payload: bytes, op: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``(blobs, header)`` of a reply; ``ValueError`` when it is not the answer to ``op``."""
    tensors, header = unpack(payload)
    if header.get("kind") != "privacy" or header.get("op") != op:
        raise ValueError(f"expected a reply to {op!r}, got {header.get('kind')!r}/{header.get('op')!r}")
    return {name: to_bytes(t) for name, t in tensors.items()}, header


def ckks_tensors(chunks: list[bytes]) -> NamedTensors:
    """CKKS ciphertext chunks as the tensors of an :class:`~mpctf.messages.Update`."""
    return {f"{CKKS_PREFIX}{i:06d}": to_tensor(c) for i, c in enumerate(chunks)}


def ckks_chunks(tensors: NamedTensors) -> list[bytes]:
    """Inverse of :func:`ckks_tensors`; ``ValueError`` on a tensor that is not a ciphertext chunk."""
    stray = [k for k in tensors if not k.startswith(CKKS_PREFIX)]
    if stray:
        raise ValueError(f"encrypted update carries a plaintext tensor {stray[0]!r}")
    return [to_bytes(tensors[k]) for k in sorted(tensors)]
