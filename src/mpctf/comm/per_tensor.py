"""The shared frame of codecs that transform each floating-point tensor on its own.

Such a codec turns tensor ``name`` into one or more parts stored under ``name::suffix`` (or under ``name``
itself for a one-to-one transform) and records the original shape and dtype in the header. Tensors the codec
does not select (the integer indices of an earlier top-k stage, for instance) pass through unchanged, which is
what lets codecs be chained in any order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mpctf.messages import NamedTensors

#: Encodes one tensor: ``(name, tensor) -> ({suffix: part}, extra header fields)``.
EncodeOne = Callable[[str, torch.Tensor], tuple[NamedTensors, dict[str, Any]]]
#: Decodes one tensor: ``(parts by suffix, shape, dtype, its header entry) -> tensor``.
DecodeOne = Callable[[NamedTensors, tuple[int, ...], torch.dtype, dict[str, Any]], torch.Tensor]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"``: the JSON form of a dtype in codec headers."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`; ``ValueError`` for a name that is not a torch dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"codec header names unknown dtype {name!r}")
    return dtype


def is_float(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point()


def part_key(name: str, suffix: str) -> str:
    return f"{name}::{suffix}" if suffix else name


def encode_each(
    tensors: NamedTensors, encode_one: EncodeOne, *, select: Callable[[torch.Tensor], bool] = is_float
) -> tuple[NamedTensors, dict[str, dict[str, Any]]]:
    """Apply ``encode_one`` to every selected tensor; return the encoded tensors and the per-tensor header."""
    out: NamedTensors = {}
    infos: dict[str, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if not select(tensor):
            _put(out, name, tensor)
            continue
        parts, extra = encode_one(name, tensor)
        for suffix, part in parts.items():
            _put(out, part_key(name, suffix), part)
        infos[name] = {"shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype), **extra}
    return out, infos


def decode_each(
    tensors: NamedTensors, infos: dict[str, dict[str, Any]], suffixes: Sequence[str], decode_one: DecodeOne
) -> NamedTensors:
    """Inverse of :func:`encode_each`: rebuild every tensor named in ``infos``, pass the others through."""
    out: NamedTensors = {}
    consumed: set[str] = set()
    for name, info in infos.items():
        keys = [part_key(name, suffix) for suffix in suffixes]
        missing = [key for key in keys if key not in tensors]
        if missing:
            raise ValueError(f"encoded tensors lack {missing[0]!r}")
        parts = {suffix: tensors[key] for suffix, key in zip(suffixes, keys, strict=True)}
        out[name] = decode_one(parts, tuple(info["shape"]), dtype_from_name(info["dtype"]), info)
        consumed.update(keys)
    for name, tensor in tensors.items():
        if name not in consumed:
            _put(out, name, tensor)
    return out


def expect_numel(what: str, tensor: torch.Tensor, expected: int) -> None:
    """Reject a malformed part before indexing code sees it (a bad index is a device-side assert on CUDA)."""
    if tensor.numel() != expected:
        raise ValueError(f"{what} has {tensor.numel()} elements, expected {expected}")


def _put(out: NamedTensors, key: str, tensor: torch.Tensor) -> None:
    if key in out:
        raise ValueError(f"encoded key {key!r} collides with another tensor's name; rename that tensor")
    out[key] = tensor
