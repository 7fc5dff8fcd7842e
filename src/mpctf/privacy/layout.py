"""Flatten named tensors into one vector and back, remembering names, shapes and dtypes.

Secure aggregation and homomorphic encryption work on one flat vector per party; the layout is public metadata
(the same for every party: it is the shape of the trainable state) that travels beside the vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mpctf.messages import NamedTensors


@dataclass(frozen=True)
class TensorLayout:
    """Names (sorted), shapes and dtypes of a flattened ``dict[str, Tensor]``."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def numel(self) -> int:
        return sum(_numel(s) for s in self.shapes)

    def is_floating(self, index: int) -> bool:
        return getattr(torch, self.dtypes[index]).is_floating_point

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "dtypes": list(self.dtypes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorLayout:
        return cls(
            names=tuple(data["names"]),
            shapes=tuple(tuple(int(d) for d in s) for s in data["shapes"]),
            dtypes=tuple(data["dtypes"]),
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def layout_of(tensors: NamedTensors) -> TensorLayout:
    """The layout of ``tensors``, keys in sorted order so every party flattens identically."""
    names = tuple(sorted(tensors))
    return TensorLayout(
        names=names,
        shapes=tuple(tuple(tensors[n].shape) for n in names),
        dtypes=tuple(str(tensors[n].dtype).removeprefix("torch.") for n in names),
    )


def segments(layout: TensorLayout) -> list[tuple[str, int, int]]:
    """``(name, start, stop)`` of each tensor inside the flat vector."""
    out, start = [], 0
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        stop = start + _numel(shape)
        out.append((name, start, stop))
        start = stop
    return out


def flatten(tensors: NamedTensors, dtype: torch.dtype) -> tuple[torch.Tensor, TensorLayout]:
    """Concatenate every tensor (sorted by name) into one 1-D tensor of ``dtype`` on the tensors' device."""
    layout = layout_of(tensors)
    if not layout.names:
        return torch.zeros(0, dtype=dtype), layout
    flat = torch.cat([tensors[n].detach().reshape(-1).to(dtype) for n in layout.names])
    return flat, layout


def unflatten(flat: torch.Tensor, layout: TensorLayout, dtype: torch.dtype | None = None) -> NamedTensors:
    """Inverse of :func:`flatten`; casts each piece to ``dtype`` (default: its recorded dtype)."""
    if flat.numel() != layout.numel:
        raise ValueError(f"flat vector has {flat.numel()} values, layout expects {layout.numel}")
    out: NamedTensors = {}
    for index, (name, start, stop) in enumerate(segments(layout)):
        target = dtype if dtype is not None else getattr(torch, layout.dtypes[index])
        out[name] = flat[start:stop].reshape(layout.shapes[index]).to(target)
    return out
