"""The ``int8`` codec: blockwise absmax quantisation to 8-bit codes."""

from __future__ import annotations

from typing import Any

from mpctf.comm.base import CODECS, Codec
from mpctf.comm.blockwise import INT8, QuantizeParams, decode_quantized, encode_quantized
from mpctf.messages import NamedTensors


@CODECS.register("int8")
class Int8Codec(Codec):
    """Blockwise absmax quantisation to int8 codes in ``[−127, 127]`` with one float32 scale per block.

    Reference: Dettmers et al. (2022), "8-bit Optimizers via Block-wise Quantization", ICLR.

    Rule (block ``b``): ``s_b = max|x_b| / 127``, ``q = round(x / s_b)``, ``x̂ = q · s_b``, hence
    ``|x − x̂| ≤ s_b / 2`` (``< s_b`` with stochastic rounding, which is unbiased). Wire size: 1 byte per value
    plus 4 bytes per block (≈ 3.8× smaller than float32 at the default block of 64).
    """

    integer_bits = 8

    Params = QuantizeParams
    params: QuantizeParams

    def encode(self, tensors: NamedTensors, state: dict[str, Any]) -> tuple[NamedTensors, dict[str, Any]]:
        return encode_quantized(tensors, self.params, INT8)

    def decode(self, tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
        return decode_quantized(tensors, header, INT8)
