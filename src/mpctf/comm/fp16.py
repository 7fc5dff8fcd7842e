"""The ``fp16`` codec: IEEE half precision on the wire."""

from __future__ import annotations

from typing import Any

import torch

from mpctf.comm.base import CODECS, Codec
from mpctf.comm.cast import cast_decode, cast_encode
from mpctf.messages import NamedTensors


@CODECS.register("fp16")
class Fp16Codec(Codec):
    """Cast float32/float64 tensors to float16 (11 significant bits, largest finite value 65504).

    Reference: Micikevicius et al. (2018), "Mixed Precision Training".

    Rule: ``x̂ = float16(x)`` rounded to nearest, so ``|x − x̂| ≤ 2⁻¹¹·|x|`` for ``|x| ≥ 2⁻¹⁴`` and
    ``|x − x̂| ≤ 2⁻²⁵`` below (subnormals). Encoding fails, naming the tensor, when a value would overflow.
    16-bit tensors pass through unchanged; decoding restores the recorded dtype.
    """

    def encode(self, tensors: NamedTensors, state: dict[str, Any]) -> tuple[NamedTensors, dict[str, Any]]:
        return cast_encode(tensors, torch.float16)

    def decode(self, tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
        return cast_decode(tensors, header)
