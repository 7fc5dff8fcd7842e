"""What travels between the server and a party, and how it becomes bytes.

A message is named tensors plus a small JSON header. Both directions use the same wire format (safetensors with
the header in its metadata), so the runtimes move opaque ``bytes`` and byte accounting is exact: the number in
the metrics is the length of what was sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

NamedTensors = dict[str, torch.Tensor]

_HEADER_KEY = "mpctf"
_EXTRA = "extra/"


def pack(tensors: NamedTensors, header: dict[str, Any]) -> bytes:
    """Serialize named tensors and a JSON-able header into one byte string."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return st_save(contiguous, metadata={_HEADER_KEY: json.dumps(header, sort_keys=True)})


def unpack(payload: bytes) -> tuple[NamedTensors, dict[str, Any]]:
    """Inverse of :func:`pack`; raises ``ValueError`` on a payload that is not one of ours."""
    try:
        tensors = st_load(payload)
        header_text = _read_metadata(payload).get(_HEADER_KEY)
    except Exception as exc:  # safetensors raises several error types for corrupt input
        raise ValueError(f"corrupt message ({len(payload)} bytes): {exc}") from None
    if header_text is None:
        raise ValueError("message has no mpctf header")
    header = json.loads(header_text)
    if not isinstance(header, dict):
        raise ValueError(f"message header is a {type(header).__name__}, not a mapping")
    return tensors, header


def _read_metadata(payload: bytes) -> dict[str, str]:
    # safetensors.torch.load drops the metadata, so read it from the JSON header the format starts with.
    size = int.from_bytes(payload[:8], "little")
    if size <= 0 or size > len(payload) - 8:
        raise ValueError("bad safetensors header length")
    return json.loads(payload[8 : 8 + size]).get("__metadata__", {})


def _split_extra(tensors: NamedTensors) -> tuple[NamedTensors, NamedTensors]:
    main = {k: v for k, v in tensors.items() if not k.startswith(_EXTRA)}
    extra = {k[len(_EXTRA) :]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
    return main, extra


def _join_extra(main: NamedTensors, extra: NamedTensors) -> NamedTensors:
    return {**main, **{_EXTRA + k: v for k, v in extra.items()}}


@dataclass
class RoundTask:
    """Server → party: the global trainable state and this round's instructions.

    ``state`` may be encoded by the downlink codecs (``header['codecs']`` says how); ``extra`` carries an
    algorithm's payload (for example SCAFFOLD's server control variate).
    """

    round: int
    state: NamedTensors
    instructions: dict[str, Any] = field(default_factory=dict)
    extra: NamedTensors = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return pack(
            _join_extra(self.state, self.extra), {"kind": "task", "round": self.round, **self.instructions}
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> RoundTask:
        tensors, header = unpack(payload)
        if header.pop("kind", None) != "task":
            raise ValueError("message is not a round task")
        state, extra = _split_extra(tensors)
        return cls(round=int(header.pop("round")), state=state, instructions=header, extra=extra)


@dataclass
class Update:
    """Party → server: ``local − global`` for every trainable tensor, how much data produced it, and metrics.

    ``tensors`` may be encoded by the uplink stages (``header`` records which); ``extra`` carries an algorithm's
    party-side payload (for example SCAFFOLD's control-variate delta).
    """

    party: str
    round: int
    tensors: NamedTensors
    num_samples: int
    num_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)
    extra: NamedTensors = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        header = {
            "kind": "update",
            "party": self.party,
            "round": self.round,
            "num_samples": self.num_samples,
            "num_tokens": self.num_tokens,
            "metrics": self.metrics,
            "stages": self.header,
        }
        return pack(_join_extra(self.tensors, self.extra), header)

    @classmethod
    def from_bytes(cls, payload: bytes) -> Update:
        tensors, header = unpack(payload)
        if header.get("kind") != "update":
            raise ValueError("message is not a party update")
        main, extra = _split_extra(tensors)
        # A reply comes from another machine: a missing or mistyped field is a bad message, never a crash.
        try:
            stages = header.get("stages", {})
            if not isinstance(stages, dict):
                raise TypeError("`stages` is not a mapping")
            return cls(
                party=str(header["party"]),
                round=int(header["round"]),
                tensors=main,
                num_samples=int(header["num_samples"]),
                num_tokens=int(header["num_tokens"]),
                metrics={str(k): float(v) for k, v in header.get("metrics", {}).items()},
                extra=extra,
                header=stages,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"malformed update header: {type(exc).__name__}: {exc}") from None
