"""The codec contract: a reversible (or bounded-error) transform of named tensors, chained per direction.

Codecs map ``dict[str, Tensor] → dict[str, Tensor]`` so every stage can be stacked in any order and the result
is always serialisable by :func:`mpctf.messages.pack`. A codec may keep per-party state between rounds (the
error-feedback residual of top-k): the caller owns that dict and passes the same one every round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from mpctf.messages import NamedTensors
from mpctf.registry import Registry


class CodecParams(BaseModel):
    """Base for a codec's own parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Codec(ABC):
    """One stage of an update's encoding. ``encode`` runs at the sender, ``decode`` at the receiver."""

    Params: ClassVar[type[CodecParams]] = CodecParams
    registered_name: ClassVar[str]
    #: True when decode(encode(x)) == x exactly.
    lossless: ClassVar[bool] = False
    #: True when ``encode`` reads or writes the per-party ``state`` (its output depends on the party's history).
    keeps_state: ClassVar[bool] = False
    #: True when the codec keeps a party-specific subset of coordinates (a sum over parties then mixes them).
    sparsifies: ClassVar[bool] = False
    #: Bits per value when the codec quantises to signed integers (``None``: it does not); under secure
    #: aggregation this sets the ring's precision instead, with one public scale for every party.
    integer_bits: ClassVar[int | None] = None

    def __init__(self, params: CodecParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def encode(self, tensors: NamedTensors, state: dict[str, Any]) -> tuple[NamedTensors, dict[str, Any]]:
        """Return the encoded tensors and a JSON-able header that ``decode`` needs (shapes, dtypes, scales...)."""

    @abstractmethod
    def decode(self, tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
        """Invert :meth:`encode` (up to the codec's error bound)."""


CODECS: Registry[Codec] = Registry("codec")
