"""The ``bf16`` codec: bfloat16 on the wire."""

from __future__ import annotations

from typing import Any

import torch

from mpctf.comm.base import CODECS, Codec
from mpctf.comm.cast import cast_decode, cast_encode
from mpctf.messages import NamedTensors


@CODECS.register("bf16")
class Bf16Codec(Codec):
    """Cast float32/float64 tensors to bfloat16 (8 significant bits, float32's exponent range).

    Reference: Kalamkar et al. (2019), "A Study of BFLOAT16 for Deep Learning Training", arXiv:1905.12322.

    Rule: ``x̂ = bfloat16(x)`` rounded to nearest, so ``|x − x̂| ≤ 2⁻⁸·|x|`` for ``|x| ≥ 2⁻¹²⁶``. Coarser than
    fp16 but it cannot overflow on float32 input. 16-bit tensors pass through unchanged; decoding restores the
    recorded dtype.
    """

    def encode(self, tensors: NamedTensors, state: dict[str, Any]) -> tuple[NamedTensors, dict[str, Any]]:
        return cast_encode(tensors, torch.bfloat16)

    def decode(self, tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
        return cast_decode(tensors, header)
