"""The ``int4`` codec: blockwise absmax quantisation to 4-bit codes, two per byte."""

from __future__ import annotations

from typing import Any

from mpctf.comm.base import CODECS, Codec
from mpctf.comm.blockwise import INT4, QuantizeParams, decode_quantized, encode_quantized
from mpctf.messages import NamedTensors


@CODECS.register("int4")
class Int4Codec(Codec):
    """Blockwise absmax quantisation to 4-bit codes in ``[−7, 7]``, two per uint8, a float32 scale per block.

    Reference: Dettmers et al. (2022), "8-bit Optimizers via Block-wise Quantization", ICLR (the blockwise
    scheme; here with 15 symmetric levels).

    Rule (block ``b``): ``s_b = max|x_b| / 7``, ``q = round(x / s_b)``, ``x̂ = q · s_b``, hence
    ``|x − x̂| ≤ s_b / 2`` (``< s_b`` with stochastic rounding, which is unbiased). Wire size: half a byte per
    value plus 4 bytes per block (≈ 7.1× smaller than float32 at the default block of 64).
    """

    integer_bits = 4

    Params = QuantizeParams
    params: QuantizeParams

    def encode(self, tensors: NamedTensors, state: dict[str, Any]) -> tuple[NamedTensors, dict[str, Any]]:
        return encode_quantized(tensors, self.params, INT4)

    def decode(self, tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
        return decode_quantized(tensors, header, INT4)
