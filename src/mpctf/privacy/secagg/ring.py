"""Fixed-point encoding of updates into the ring ``Z_2^bits`` and ring arithmetic on int64 tensors.

Floats: ``q = round(clamp(x, -r, r) · scale) mod 2^bits``; integers (an already quantised codec output, e.g.
int8 with a scale shared by all parties) are embedded as they are. The decoded sum reads ring values as signed
(two's complement in ``bits`` bits), so negative sums come back exactly as long as they do not overflow, which
:func:`check_headroom` rules out before any masking. Values stay in ``[0, 2^bits)`` with ``bits <= 62``, so
every sum of two fits an int64 and is reduced right after.
"""

from __future__ import annotations

import torch

from mpctf.messages import NamedTensors
from mpctf.privacy.layout import TensorLayout, flatten, segments, unflatten
from mpctf.privacy.secagg.params import SecAggParams


def modulus_mask(bits: int) -> int:
    return (1 << bits) - 1


def ring_add(a: torch.Tensor, b: torch.Tensor, bits: int) -> torch.Tensor:
    return (a + b) & modulus_mask(bits)


def ring_sub(a: torch.Tensor, b: torch.Tensor, bits: int) -> torch.Tensor:
    return (a - b) & modulus_mask(bits)


def check_headroom(layout: TensorLayout, params: SecAggParams, num_parties: int) -> None:
    """Raise ``ValueError`` when a sum of ``num_parties`` encoded inputs could overflow the ring."""
    limit = 1 << (params.bits - 1)
    if any(layout.is_floating(i) for i in range(len(layout.names))):
        worst = num_parties * round(params.clip_range * params.scale)
        if worst >= limit:
            raise ValueError(
                f"{num_parties} parties × clip_range {params.clip_range} × scale {params.scale:g} = {worst} "
                f"does not fit in Z_2^{params.bits}: raise `bits` or lower `scale`/`clip_range`"
            )
    for i, dtype_name in enumerate(layout.dtypes):
        if layout.is_floating(i):
            continue
        bound = torch.iinfo(getattr(torch, dtype_name)).max + 1
        if num_parties * bound > limit:
            raise ValueError(
                f"tensor {layout.names[i]!r} of dtype {dtype_name}: a sum of {num_parties} can overflow "
                f"Z_2^{params.bits}; raise `bits` (max 62) or quantise to a narrower dtype"
            )


def encode(tensors: NamedTensors, params: SecAggParams) -> tuple[torch.Tensor, TensorLayout, int]:
    """``(ring vector on CPU, layout, number of clamped float values)``; rejects NaN and Inf."""
    flat, layout = flatten({k: v.detach().cpu() for k, v in tensors.items()}, torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("cannot encode an update containing NaN or Inf")
    ring = torch.empty(flat.shape, dtype=torch.int64)
    clamped = 0
    for index, (_, start, stop) in enumerate(segments(layout)):
        piece = flat[start:stop]
        if layout.is_floating(index):
            clamped += int((piece.abs() > params.clip_range).sum())
            scaled = piece.clamp(-params.clip_range, params.clip_range) * params.scale
            if params.stochastic_rounding:
                piece = torch.floor(scaled + torch.rand(scaled.shape, dtype=scaled.dtype))
            else:
                piece = torch.round(scaled)
        ring[start:stop] = piece.to(torch.int64)
    return ring & modulus_mask(params.bits), layout, clamped


def decode(ring_sum: torch.Tensor, layout: TensorLayout, params: SecAggParams) -> NamedTensors:
    """Signed reading of the unmasked sum: float32 (÷ scale) for float entries, int64 for integer entries."""
    signed = torch.where(ring_sum >= (1 << (params.bits - 1)), ring_sum - (1 << params.bits), ring_sum)
    out = unflatten(signed, layout, dtype=torch.int64)
    for index, name in enumerate(layout.names):
        if layout.is_floating(index):
            out[name] = (out[name].to(torch.float64) / params.scale).to(torch.float32)
    return out


def to_wire(ring: torch.Tensor, bits: int) -> torch.Tensor:
    """Narrowest signed dtype holding ``bits``-bit ring values (int8, int16, int32 or int64), reinterpreted."""
    for dtype, width in ((torch.int8, 8), (torch.int16, 16), (torch.int32, 32)):
        if bits <= width:
            return torch.where(ring >= 1 << (width - 1), ring - (1 << width), ring).to(dtype)
    return ring


def from_wire(tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`to_wire`."""
    return tensor.to(torch.int64) & modulus_mask(bits)
