"""The ``zstd`` codec: lossless Zstandard compression of the whole encoded dict."""

from __future__ import annotations

from typing import Any

import torch
import zstandard
from pydantic import field_validator

from mpctf.comm.base import CODECS, Codec, CodecParams
from mpctf.comm.params import check_interval
from mpctf.messages import NamedTensors, pack, unpack

#: The single tensor this codec emits.
BLOB_KEY = "zstd"


class ZstdParams(CodecParams):
    """Zstandard compression ``level``: higher is smaller and slower."""

    level: int = 3

    @field_validator("level")
    @classmethod
    def _level(cls, value: int) -> int:
        check_interval("level", value, 1, 22)
        return value


@CODECS.register("zstd")
class ZstdCodec(Codec):
    """Serialise every tensor with :func:`mpctf.messages.pack`, compress, ship one uint8 tensor.

    Reference: Collet & Kucherawy (2021), RFC 8878, "Zstandard Compression and the application/zstd Media
    Type".

    Rule: ``blob = zstd(pack(tensors))``; decoding is ``unpack(unzstd(blob))``, bit-exact. It pays off on what
    earlier stages left regular (ascending top-k indices, small integer codes); dense random float32 barely
    shrinks. Put it last in a chain. Encoded tensors come back on the CPU, decoded ones on the blob's device.
    """

    Params = ZstdParams
    params: ZstdParams
    lossless = True

    def encode(self, tensors: NamedTensors, state: dict[str, Any]) -> tuple[NamedTensors, dict[str, Any]]:
        raw = pack(tensors, {})
        blob = zstandard.ZstdCompressor(level=self.params.level).compress(raw)
        return {BLOB_KEY: torch.frombuffer(bytearray(blob), dtype=torch.uint8)}, {"raw_bytes": len(raw)}

    def decode(self, tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
        blob = tensors[BLOB_KEY]
        try:
            raw = zstandard.ZstdDecompressor().decompress(blob.cpu().numpy().tobytes())
        except zstandard.ZstdError as exc:
            raise ValueError(f"corrupt zstd blob ({blob.numel()} bytes): {exc}") from None
        decoded, _ = unpack(raw)
        return {name: tensor.to(blob.device) for name, tensor in decoded.items()}
