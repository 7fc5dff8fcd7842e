"""Update codecs. Importing this package registers every built-in codec."""

from mpctf.comm import bf16, fp16, int4, int8, topk, zstd  # noqa: F401  (registration side effect)
from mpctf.comm.accounting import fp32_bytes, tensor_bytes
from mpctf.comm.base import CODECS, Codec, CodecParams
from mpctf.comm.chain import CodecChain, StageSpec, build_codec, chain_from_specs

__all__ = [
    "CODECS",
    "Codec",
    "CodecChain",
    "CodecParams",
    "StageSpec",
    "build_codec",
    "chain_from_specs",
    "fp32_bytes",
    "tensor_bytes",
]
