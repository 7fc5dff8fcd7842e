"""Casting wider floating-point tensors to a 16-bit float, shared by the ``fp16`` and ``bf16`` codecs.

Only tensors wider than 16 bits are cast: a tensor that is already 16-bit would gain nothing in size, and
casting float16 to bfloat16 (or back) would lose precision for nothing. The original dtype goes into the
header and decoding restores it.
"""

from __future__ import annotations

from typing import Any

import torch

from mpctf.comm.per_tensor import decode_each, encode_each
from mpctf.messages import NamedTensors


def _wider_than_16_bits(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.element_size() > 2


def cast_encode(tensors: NamedTensors, target: torch.dtype) -> tuple[NamedTensors, dict[str, Any]]:
    """Cast floating tensors wider than 16 bits to ``target``; ``ValueError`` if a finite value overflows."""

    def encode_one(name: str, tensor: torch.Tensor) -> tuple[NamedTensors, dict[str, Any]]:
        cast = tensor.detach().to(target)
        # An overflow would reach the server as Inf and get the update rejected; fail here, naming the tensor.
        if bool((torch.isinf(cast) & torch.isfinite(tensor)).any()):
            peak = float(tensor.detach().abs().max())
            raise ValueError(f"tensor {name!r} has values up to {peak:.4g}, beyond the range of {target}")
        return {"": cast}, {}

    encoded, infos = encode_each(tensors, encode_one, select=_wider_than_16_bits)
    return encoded, {"tensors": infos}


def cast_decode(tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
    """Cast every tensor named in the header back to its recorded dtype."""
    return decode_each(
        tensors, header["tensors"], ("",), lambda parts, shape, dtype, info: parts[""].to(dtype)
    )
