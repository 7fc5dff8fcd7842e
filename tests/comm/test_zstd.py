import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mpctf.comm import build_codec
from mpctf.comm.zstd import BLOB_KEY, ZstdCodec, ZstdParams
from mpctf.messages import pack

BOUNDED = settings(max_examples=30, deadline=None)


def test_registered_as_lossless_zstd_with_default_level() -> None:
    codec = build_codec("zstd")
    assert isinstance(codec, ZstdCodec)
    assert codec.lossless
    assert codec.params.level == 3


@BOUNDED
@given(data=st.data(), level=st.sampled_from([1, 3, 19]))
def test_round_trip_is_bit_exact_and_ships_one_uint8_tensor(
    data: st.DataObject, level: int, named_float_tensors: st.SearchStrategy[dict[str, torch.Tensor]]
) -> None:
    tensors = {**data.draw(named_float_tensors), "idx": torch.arange(7, dtype=torch.int32)}
    codec = build_codec("zstd", {"level": level})
    encoded, header = codec.encode(tensors, {})
    assert list(encoded) == [BLOB_KEY]
    assert encoded[BLOB_KEY].dtype == torch.uint8 and encoded[BLOB_KEY].dim() == 1
    assert header == {"raw_bytes": len(pack(tensors, {}))}
    decoded = codec.decode(encoded, header)
    assert sorted(decoded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert decoded[name].dtype == tensor.dtype
        assert torch.equal(decoded[name], tensor)


def test_regular_data_shrinks() -> None:
    tensors = {"zeros": torch.zeros(10_000), "pattern": torch.arange(16, dtype=torch.int32).repeat(625)}
    encoded, header = build_codec("zstd").encode(tensors, {})
    assert encoded[BLOB_KEY].numel() < header["raw_bytes"] / 20


def test_corrupt_blob_is_a_value_error() -> None:
    codec = build_codec("zstd")
    encoded, header = codec.encode({"x": torch.ones(100)}, {})
    with pytest.raises(ValueError, match="corrupt zstd blob"):
        codec.decode({BLOB_KEY: encoded[BLOB_KEY][:-5]}, header)


@pytest.mark.parametrize("level", [0, 23])
def test_level_must_be_in_1_22(level: int) -> None:
    with pytest.raises(ValidationError, match=rf"`level` must be in \[1, 22\], got {level}"):
        ZstdParams(level=level)
