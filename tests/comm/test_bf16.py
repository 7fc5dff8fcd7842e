import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctf.comm import build_codec
from mpctf.comm.bf16 import Bf16Codec

BOUNDED = settings(max_examples=40, deadline=None)


def test_registered_as_bf16() -> None:
    assert isinstance(build_codec("bf16"), Bf16Codec)


@BOUNDED
@given(data=st.data())
def test_relative_error_bound(
    data: st.DataObject, wide_float_tensors: st.SearchStrategy[torch.Tensor]
) -> None:
    """|x − x̂| ≤ 2⁻⁸·|x| for normal values."""
    x = data.draw(wide_float_tensors)
    codec = build_codec("bf16")
    encoded, header = codec.encode({"x": x}, {})
    assert encoded["x"].dtype == torch.bfloat16
    x_hat = codec.decode(encoded, header)["x"]
    assert x_hat.dtype == x.dtype and x_hat.shape == x.shape
    x64 = x.double()
    assert bool(((x_hat.double() - x64).abs() <= 2.0**-8 * x64.abs()).all())


def test_hand_computed_rounding_and_no_overflow_at_float32_scale() -> None:
    # bfloat16 keeps 8 significant bits: the spacing at 1 is 2⁻⁷.
    x = torch.tensor([1 + 2.0**-9, 1 + 3 * 2.0**-9, 1e38])
    codec = build_codec("bf16")
    x_hat = codec.decode(*codec.encode({"x": x}, {}))["x"]
    assert x_hat[:2].tolist() == [1.0, 1 + 2.0**-7]
    assert torch.isfinite(x_hat[2]) and abs(float(x_hat[2]) / 1e38 - 1) <= 2.0**-8
