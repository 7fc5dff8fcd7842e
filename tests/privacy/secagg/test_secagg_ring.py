from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctf.privacy.layout import layout_of
from mpctf.privacy.secagg import SecAggParams, ring


def test_encode_hand_computed():
    params = SecAggParams(bits=8, scale=4.0, clip_range=1.0)
    encoded, layout, clamped = ring.encode({"w": torch.tensor([0.5, -0.25, 3.0, -0.1])}, params)
    # 0.5·4 = 2; −0.25·4 = −1 ≡ 255; 3 clamps to 1 → 4; −0.1·4 = −0.4 rounds to 0
    assert encoded.tolist() == [2, 255, 4, 0]
    assert clamped == 1
    assert layout.names == ("w",)


def test_decode_reads_twos_complement():
    params = SecAggParams(bits=8, scale=4.0)
    layout = layout_of({"w": torch.zeros(3)})
    out = ring.decode(torch.tensor([2, 255, 128]), layout, params)["w"]
    assert out.tolist() == [0.5, -0.25, -32.0]


def test_ring_add_sub_wrap():
    assert ring.ring_add(torch.tensor([250]), torch.tensor([10]), 8).item() == 4
    assert ring.ring_sub(torch.tensor([3]), torch.tensor([10]), 8).item() == 249


@pytest.mark.parametrize(
    ("bits", "dtype"),
    [(8, torch.int8), (11, torch.int16), (16, torch.int16), (32, torch.int32), (48, torch.int64)],
)
def test_wire_roundtrip_in_the_narrowest_dtype(bits, dtype):
    values = torch.tensor([0, 1, (1 << bits) - 1, 1 << (bits - 1), 123 % (1 << bits)])
    wire = ring.to_wire(values, bits)
    assert wire.dtype == dtype
    assert torch.equal(ring.from_wire(wire, bits), values)


def test_nan_is_refused():
    with pytest.raises(ValueError, match="NaN or Inf"):
        ring.encode({"w": torch.tensor([float("nan")])}, SecAggParams())


def test_headroom_for_integer_dtypes():
    layout = layout_of({"q": torch.zeros(2, dtype=torch.int8)})
    ring.check_headroom(layout, SecAggParams(bits=16), 255)  # 255·128 < 2^15
    with pytest.raises(ValueError, match="dtype int8: a sum of 257 can overflow"):
        ring.check_headroom(layout, SecAggParams(bits=16), 257)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=5, max_size=5), min_size=1, max_size=6
    )
)
def test_decoded_sum_within_rounding_bound(values):
    params = SecAggParams()
    total = None
    for row in values:
        encoded, layout, _ = ring.encode({"w": torch.tensor(row)}, params)
        total = encoded if total is None else ring.ring_add(total, encoded, params.bits)
    decoded = ring.decode(total, layout, params)["w"].double()
    expected = torch.tensor(values, dtype=torch.float64).sum(0)
    assert (decoded - expected).abs().max() <= len(values) * 0.5 / params.scale + 1e-6


def test_integer_code_ring_has_one_public_scale_and_room_for_the_sum():
    params = SecAggParams(clip_range=0.5).for_integer_codes(8, 5)
    assert params.scale == 127 / 0.5 and params.bits == 8 + 3 + 1 and params.stochastic_rounding
    encoded, layout, _ = ring.encode({"w": torch.full((4000,), 0.3 / 254)}, params)  # 0.3 of a code
    assert set(encoded.tolist()) == {0, 1} and abs(encoded.float().mean().item() - 0.3) < 0.03  # unbiased
    ring.check_headroom(layout, params, 5)
