"""Protocol messages ↔ bytes, on top of :func:`mpctf.messages.pack` (no pickle: peers are not trusted).

A message is a dict of str/int/bytes/lists/dicts and tensors; tensors go into the safetensors body, bytes are
base64 in the JSON header.
"""

from __future__ import annotations

import base64
from typing import Any

import torch

from mpctf.messages import pack, unpack

_BYTES, _TENSOR = "$b", "$t"


def dumps(message: dict[str, Any]) -> bytes:
    """Serialise one secure-aggregation message."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, bytes):
            return {_BYTES: base64.b64encode(value).decode()}
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value
            return {_TENSOR: key}
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [encode(v) for v in value]
        return value

    header = encode(message)
    return pack(tensors, {"secagg": header})


def loads(payload: bytes) -> dict[str, Any]:
    """Inverse of :func:`dumps`; ``ValueError`` on anything that is not such a message."""
    tensors, header = unpack(payload)
    if "secagg" not in header:
        raise ValueError("payload is not a secure-aggregation message")

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_BYTES}:
                return base64.b64decode(value[_BYTES])
            if set(value) == {_TENSOR}:
                return tensors[value[_TENSOR]]
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(header["secagg"])
