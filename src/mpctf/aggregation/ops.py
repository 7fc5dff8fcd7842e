"""Small pure functions on named tensors shared by several strategies."""

from __future__ import annotations

import torch

from mpctf.messages import NamedTensors


def apply_delta(global_state: NamedTensors, delta: NamedTensors, *, scale: float = 1.0) -> NamedTensors:
    """``x + scale · Δ`` in float32, cast back to each dtype; tensors without a delta are kept as they are."""
    return {
        k: torch.add(g.to(torch.float32), delta[k].to(g.device), alpha=scale).to(g.dtype) if k in delta else g
        for k, g in global_state.items()
    }


def zeros_like_f32(tensors: NamedTensors) -> NamedTensors:
    """Float32 zeros shaped and placed like ``tensors`` (initial moments, momentum, control variates)."""
    return {k: torch.zeros(v.shape, dtype=torch.float32, device=v.device) for k, v in tensors.items()}


def clone_state(tensors: NamedTensors) -> NamedTensors:
    """Detached copies, so a saved ``state_dict`` does not change when the strategy goes on."""
    return {k: v.detach().clone() for k, v in tensors.items()}


def require_same_keys(saved: NamedTensors, current: NamedTensors, what: str) -> None:
    """``ValueError`` when server state kept across rounds no longer matches the global state's tensors."""
    if set(saved) != set(current):
        odd = sorted(set(saved) ^ set(current))
        raise ValueError(f"the global state does not match {what}: tensor {odd[0]!r} is in only one of them")
