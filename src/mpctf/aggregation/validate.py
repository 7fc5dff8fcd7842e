"""Checks every update before any aggregation: keys, shapes, finite values, sane norm and counts.

A failing update is rejected for the round with the party and the reason; the round goes on without it.
"""

from __future__ import annotations

import math

import torch

from mpctf.errors import UpdateRejected
from mpctf.messages import NamedTensors, Update


def validate_update(update: Update, reference: NamedTensors, *, max_norm: float | None = None) -> float:
    """Raise :class:`UpdateRejected` naming the party and problem; return the update's global L2 norm."""
    who = f"party {update.party!r}"
    missing = sorted(set(reference) - set(update.tensors))
    unexpected = sorted(set(update.tensors) - set(reference))
    if missing:
        raise UpdateRejected(f"{who}: update lacks {len(missing)} tensor(s), first {missing[0]!r}")
    if unexpected:
        raise UpdateRejected(f"{who}: update has unexpected tensor(s), first {unexpected[0]!r}")
    if update.num_samples <= 0:
        raise UpdateRejected(f"{who}: update reports num_samples={update.num_samples}, must be > 0")
    squared = 0.0
    for name, ref in reference.items():
        tensor = update.tensors[name]
        if tuple(tensor.shape) != tuple(ref.shape):
            raise UpdateRejected(
                f"{who}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(ref.shape)}"
            )
        if not tensor.dtype.is_floating_point:
            raise UpdateRejected(f"{who}: tensor {name!r} has dtype {tensor.dtype}, expected a floating type")
        if not bool(torch.isfinite(tensor).all()):
            raise UpdateRejected(f"{who}: tensor {name!r} contains NaN or Inf")
        squared += float(tensor.detach().to(torch.float64).pow(2).sum())
    norm = math.sqrt(squared)
    if max_norm is not None and norm > max_norm:
        raise UpdateRejected(f"{who}: update norm {norm:.4g} exceeds the limit {max_norm:.4g}")
    return norm
