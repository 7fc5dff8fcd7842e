"""Byte accounting for codecs. The bytes actually sent are ``len(mpctf.messages.pack(...))``, measured by the
caller; these helpers give the reference points that number is compared with."""

from __future__ import annotations

from mpctf.messages import NamedTensors


def fp32_bytes(tensors: NamedTensors) -> int:
    """Bytes the tensors' values would take as float32, whatever their dtype: the baseline of a ratio."""
    return 4 * sum(t.numel() for t in tensors.values())


def tensor_bytes(tensors: NamedTensors) -> int:
    """Bytes of the tensors' data in their own dtypes, without any container overhead."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
