import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctf.comm import build_codec
from mpctf.comm.fp16 import Fp16Codec

BOUNDED = settings(max_examples=40, deadline=None)


def test_registered_as_fp16() -> None:
    assert isinstance(build_codec("fp16"), Fp16Codec)


@BOUNDED
@given(data=st.data())
def test_relative_error_bound(
    data: st.DataObject, wide_float_tensors: st.SearchStrategy[torch.Tensor]
) -> None:
    """|x − x̂| ≤ 2⁻¹¹·|x| + 2⁻²⁵ (half the subnormal spacing) within float16's range."""
    x = data.draw(wide_float_tensors)
    codec = build_codec("fp16")
    encoded, header = codec.encode({"x": x}, {})
    assert encoded["x"].dtype == torch.float16
    x_hat = codec.decode(encoded, header)["x"]
    assert x_hat.dtype == x.dtype and x_hat.shape == x.shape
    x64 = x.double()
    assert bool(((x_hat.double() - x64).abs() <= 2.0**-11 * x64.abs() + 2.0**-25).all())


def test_hand_computed_rounding() -> None:
    # float16's spacing at 1 is 2⁻¹⁰: 1 + 2⁻¹² rounds down to 1, 1 + 3·2⁻¹² rounds up to 1 + 2⁻¹⁰.
    x = torch.tensor([1 + 2.0**-12, 1 + 3 * 2.0**-12, 65504.0], dtype=torch.float64)
    codec = build_codec("fp16")
    x_hat = codec.decode(*codec.encode({"x": x}, {}))["x"]
    assert x_hat.tolist() == [1.0, 1 + 2.0**-10, 65504.0]
