"""Blockwise absmax quantisation, shared by the ``int8`` and ``int4`` codecs.

Each tensor is flattened and cut into blocks of ``block_size`` values (the last block may be shorter).
Block ``b`` gets the scale ``s_b = max_{i∈b} |x_i| / q_max`` and each value the integer code
``q_i = round(x_i / s_b)`` in ``[−q_max, q_max]``; decoding computes ``x̂_i = q_i · s_b``. Round-to-nearest
gives ``|x_i − x̂_i| ≤ s_b / 2``; stochastic rounding, ``q_i = floor(x_i / s_b + u)`` with ``u ~ U[0, 1)``,
gives ``|x_i − x̂_i| < s_b`` and ``E[x̂_i] = x_i``. An outlier only costs precision within its own block,
which is why blocks beat one scale per tensor (Dettmers et al., 2022).

Arithmetic runs in float32 (float64 for float64 input); scales travel as float32; the result is cast back to
the tensor's dtype, which adds that dtype's rounding for 16-bit inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import field_validator

from mpctf.comm.base import CodecParams
from mpctf.comm.params import check_interval
from mpctf.comm.per_tensor import decode_each, encode_each, expect_numel
from mpctf.messages import NamedTensors


class QuantizeParams(CodecParams):
    """``block_size`` values share one scale; ``stochastic_rounding`` makes the codes unbiased."""

    block_size: int = 64
    stochastic_rounding: bool = False

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, value: int) -> int:
        check_interval("block_size", value, 1)
        return value


@dataclass(frozen=True)
class CodeFormat:
    """How codes in ``[−qmax, qmax]`` are stored: ``pack(int8 codes)`` and ``unpack(stored, count)``."""

    qmax: int
    pack: Callable[[torch.Tensor], torch.Tensor]
    unpack: Callable[[torch.Tensor, int], torch.Tensor]
    stored_numel: Callable[[int], int]


def quantize_blockwise(
    x: torch.Tensor, *, qmax: int, block_size: int, stochastic: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the int8 codes (one per element of ``x``, flattened) and the float32 scale of each block."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    flat = x.detach().reshape(-1).to(work)
    blocks = _pad_to_blocks(flat, block_size)
    scales = (blocks.abs().amax(dim=1) / qmax).to(torch.float32)
    # All-zero blocks have scale 0; dividing by 1 instead gives them code 0 without a NaN.
    divisor = torch.where(scales > 0, scales, torch.ones_like(scales)).to(work)
    ratio = blocks / divisor[:, None]
    rounded = torch.floor(ratio + torch.rand_like(ratio)) if stochastic else torch.round(ratio)
    codes = rounded.clamp_(-qmax, qmax).to(torch.int8).reshape(-1)[: flat.numel()]
    return codes, scales


def dequantize_blockwise(codes: torch.Tensor, scales: torch.Tensor, *, block_size: int) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: the flat float32 reconstruction ``q_i · s_b``."""
    blocks = _pad_to_blocks(codes.to(torch.float32), block_size)
    return (blocks * scales.to(torch.float32)[:, None]).reshape(-1)[: codes.numel()]


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, element ``2i`` in the low nibble and ``2i+1`` in the high one.

    Written by hand because torch has no 4-bit dtype that safetensors can ship (``quint4x2`` is not
    serialisable) and the libraries that pack nibbles are CUDA-only. Codes in ``[−8, 7]`` are stored
    offset by 8.
    """
    nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)
    pairs = F.pad(nibbles, (0, nibbles.numel() % 2)).view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: the first ``count`` int8 codes."""
    nibbles = torch.stack((packed & 0x0F, packed >> 4), dim=1).reshape(-1)[:count]
    return nibbles.to(torch.int8) - 8


INT8 = CodeFormat(
    qmax=127, pack=lambda codes: codes, unpack=lambda stored, count: stored, stored_numel=lambda n: n
)
INT4 = CodeFormat(qmax=7, pack=pack_int4, unpack=unpack_int4, stored_numel=lambda n: (n + 1) // 2)


def encode_quantized(
    tensors: NamedTensors, params: QuantizeParams, fmt: CodeFormat
) -> tuple[NamedTensors, dict[str, Any]]:
    """Quantise every floating tensor to ``name::q`` (codes) and ``name::scale`` (one float32 per block)."""

    def encode_one(name: str, tensor: torch.Tensor) -> tuple[NamedTensors, dict[str, Any]]:
        codes, scales = quantize_blockwise(
            tensor, qmax=fmt.qmax, block_size=params.block_size, stochastic=params.stochastic_rounding
        )
        return {"q": fmt.pack(codes), "scale": scales}, {}

    encoded, infos = encode_each(tensors, encode_one)
    return encoded, {"block_size": params.block_size, "tensors": infos}


def decode_quantized(tensors: NamedTensors, header: dict[str, Any], fmt: CodeFormat) -> NamedTensors:
    """Inverse of :func:`encode_quantized`, restoring each tensor's shape and dtype."""
    block_size = int(header["block_size"])

    def decode_one(
        parts: NamedTensors, shape: tuple[int, ...], dtype: torch.dtype, info: dict[str, Any]
    ) -> torch.Tensor:
        numel = math.prod(shape)
        expect_numel("quantised codes", parts["q"], fmt.stored_numel(numel))
        expect_numel("block scales", parts["scale"], -(-numel // block_size))
        codes = fmt.unpack(parts["q"], numel)
        return dequantize_blockwise(codes, parts["scale"], block_size=block_size).reshape(shape).to(dtype)

    return decode_each(tensors, header["tensors"], ("q", "scale"), decode_one)


def _pad_to_blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    return F.pad(flat, (0, -flat.numel() % block_size)).view(-1, block_size)
