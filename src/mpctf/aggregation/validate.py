"""Checks every update before any aggregation: keys, shapes, finite values, sane norm and counts.

A failing update is rejected for the round with the party and the reason; the round goes on without it. The
reference is what that party was sent (``Strategy.state_for_party``), so parties of different LoRA ranks are
each checked against their own shapes. Strategies run the same checks on their own inputs (control-variate
deltas, metrics) before they touch their accumulators, so a rejected update never leaves a trace.
"""

from __future__ import annotations

import math

import torch

from mpctf.errors import UpdateRejected
from mpctf.messages import NamedTensors, Update


def validate_update(update: Update, reference: NamedTensors, *, max_norm: float | None = None) -> float:
    """Raise :class:`UpdateRejected` naming the party and problem; return the update's global L2 norm."""
    who = f"party {update.party!r}"
    if update.num_samples <= 0:
        raise UpdateRejected(f"{who}: update reports num_samples={update.num_samples}, must be > 0")
    norm = validate_tensors(who, update.tensors, reference, what="update")
    if max_norm is not None and norm > max_norm:
        raise UpdateRejected(f"{who}: update norm {norm:.4g} exceeds the limit {max_norm:.4g}")
    return norm


def validate_tensors(who: str, tensors: NamedTensors, reference: NamedTensors, *, what: str) -> float:
    """Check ``tensors`` against ``reference`` (same keys and shapes, floating, finite); return their L2 norm.

    ``who`` and ``what`` name the sender and the kind of tensors in the message (``"update"``, ``"extra"``).
    """
    missing = sorted(set(reference) - set(tensors))
    unexpected = sorted(set(tensors) - set(reference))
    if missing:
        raise UpdateRejected(f"{who}: {what} lacks {len(missing)} tensor(s), first {missing[0]!r}")
    if unexpected:
        raise UpdateRejected(f"{who}: {what} has unexpected tensor(s), first {unexpected[0]!r}")
    squared = 0.0
    for name, ref in reference.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(ref.shape):
            raise UpdateRejected(
                f"{who}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(ref.shape)}"
            )
        if not tensor.dtype.is_floating_point:
            raise UpdateRejected(f"{who}: tensor {name!r} has dtype {tensor.dtype}, expected a floating type")
        squared += _finite_norm(who, name, tensor) ** 2
    return math.sqrt(squared)


def _finite_norm(who: str, name: str, tensor: torch.Tensor) -> float:
    # A float32 norm needs no copy of the tensor and is finite exactly when every element is finite and the
    # sum of squares does not overflow; only otherwise (rarely) is an element-wise test worth its memory.
    norm = float(torch.linalg.vector_norm(tensor.detach(), dtype=torch.float32))
    if math.isfinite(norm):
        return norm
    if not bool(torch.isfinite(tensor).all()):
        raise UpdateRejected(f"{who}: tensor {name!r} contains NaN or Inf")
    raise UpdateRejected(f"{who}: tensor {name!r} has a norm beyond the float32 range (absurd update)")
