import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mpctf.comm import build_codec
from mpctf.comm.blockwise import (
    QuantizeParams,
    dequantize_blockwise,
    pack_int4,
    quantize_blockwise,
    unpack_int4,
)

BOUNDED = settings(max_examples=40, deadline=None)
QMAX = {"int8": 127, "int4": 7}


def test_hand_computed_quantize_and_dequantize() -> None:
    # Blocks of 3: [2.54, -1, 0.3] has scale 2.54/127 = 0.02, [0, 0, 0] scale 0, the ragged [0.1] 0.1/127.
    x = torch.tensor([2.54, -1.0, 0.3, 0.0, 0.0, 0.0, 0.1])
    codes, scales = quantize_blockwise(x, qmax=127, block_size=3)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [127, -50, 15, 0, 0, 0, 127]
    assert torch.allclose(scales, torch.tensor([0.02, 0.0, 0.1 / 127]))
    assert torch.allclose(dequantize_blockwise(codes, scales, block_size=3), x)


def test_hand_computed_int4_packing() -> None:
    # Codes [7, −3, 2, −7] offset by 8 are nibbles [15, 5, 10, 1]: bytes 15 + 5·16 = 95 and 10 + 1·16 = 26.
    codes = torch.tensor([7, -3, 2, -7], dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [95, 26]
    assert unpack_int4(packed, 4).tolist() == [7, -3, 2, -7]


def test_odd_count_packs_into_a_padded_byte() -> None:
    codes = torch.tensor([-7, 0, 7], dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.tolist() == [1 + 8 * 16, 15]
    assert unpack_int4(packed, 3).tolist() == [-7, 0, 7]


@BOUNDED
@given(codes=st.lists(st.integers(-8, 7), max_size=50))
def test_int4_packing_round_trips(codes: list[int]) -> None:
    tensor = torch.tensor(codes, dtype=torch.int8)
    packed = pack_int4(tensor)
    assert packed.numel() == (len(codes) + 1) // 2
    assert unpack_int4(packed, len(codes)).tolist() == codes


def _block_scales(x: torch.Tensor, qmax: int, block_size: int) -> torch.Tensor:
    """``s_b = max|x_b| / qmax`` of each element's block, one value per element of ``x``."""
    flat = x.detach().reshape(-1).double()
    blocks = F.pad(flat, (0, -flat.numel() % block_size)).view(-1, block_size)
    scales = blocks.abs().amax(dim=1) / qmax
    return scales.repeat_interleave(block_size)[: flat.numel()].reshape(x.shape)


def _rounding_slack(x_hat: torch.Tensor) -> torch.Tensor:
    """What casting the float32 reconstruction back to ``x_hat``'s dtype may add."""
    info = torch.finfo(x_hat.dtype)
    return x_hat.double().abs() * info.eps / 2 + info.tiny * info.eps


@pytest.mark.parametrize("name", ["int8", "int4"])
@pytest.mark.parametrize("stochastic", [False, True])
@BOUNDED
@given(data=st.data(), block_size=st.sampled_from([1, 3, 64, 100]))
def test_error_within_the_block_bound(
    name: str, stochastic: bool, block_size: int, data: st.DataObject, float_tensors: st.SearchStrategy
) -> None:
    """Round-to-nearest: |x − x̂| ≤ s_b/2; stochastic: |x − x̂| < s_b; plus the output dtype's own rounding."""
    x = data.draw(float_tensors)
    codec = build_codec(name, {"block_size": block_size, "stochastic_rounding": stochastic})
    encoded, header = codec.encode({"x": x}, {})
    x_hat = codec.decode(encoded, header)["x"]
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype and x_hat.device == x.device
    scale = _block_scales(x, QMAX[name], block_size)
    bound = scale * ((1.0 if stochastic else 0.5) * (1 + 1e-4)) + _rounding_slack(x_hat)
    assert bool(((x_hat.double() - x.double()).abs() <= bound).all())


@pytest.mark.parametrize("qmax", [127, 7])
def test_stochastic_rounding_is_unbiased_and_stays_on_neighbouring_levels(qmax: int) -> None:
    torch.manual_seed(0)
    pattern = torch.tensor([0.7, -0.3, 0.16, 0.05])
    x = pattern.repeat(4000)  # every block of 4 has absmax 0.7
    codes, scales = quantize_blockwise(x, qmax=qmax, block_size=4, stochastic=True)
    x_hat = dequantize_blockwise(codes, scales, block_size=4).view(-1, 4)
    scale = 0.7 / qmax
    # Each element lands on one of the two grid levels around it ...
    low, high = torch.floor(pattern / scale) * scale, torch.ceil(pattern / scale) * scale
    on_grid = ((x_hat - low).abs() < 1e-6) | ((x_hat - high).abs() < 1e-6)
    assert bool(on_grid.all())
    # ... with the probabilities that make it unbiased: the mean of 4000 draws is within 5 standard errors.
    assert torch.allclose(x_hat.mean(dim=0), pattern, atol=5 * (scale / 2) / 4000**0.5)


def test_block_size_must_be_positive() -> None:
    with pytest.raises(ValidationError, match=r"`block_size` must be in \[1, inf\), got 0"):
        QuantizeParams(block_size=0)


def test_truncated_codes_are_rejected() -> None:
    codec = build_codec("int8")
    encoded, header = codec.encode({"x": torch.ones(10)}, {})
    encoded["x::q"] = encoded["x::q"][:9]
    with pytest.raises(ValueError, match="quantised codes has 9 elements, expected 10"):
        codec.decode(encoded, header)
