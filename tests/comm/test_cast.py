import pytest
import torch

from mpctf.comm.cast import cast_decode, cast_encode


@pytest.mark.parametrize("target", [torch.float16, torch.bfloat16])
def test_only_wider_floats_are_cast_and_the_header_keeps_their_dtype(target: torch.dtype) -> None:
    tensors = {
        "f64": torch.tensor([1.5, -2.25], dtype=torch.float64),
        "f32": torch.tensor([[0.5]]),
        "h": torch.tensor([3.0], dtype=torch.float16),
        "b": torch.tensor([3.0], dtype=torch.bfloat16),
        "i": torch.tensor([1, 2]),
    }
    encoded, header = cast_encode(tensors, target)
    assert encoded["f64"].dtype == target
    assert encoded["f32"].dtype == target
    for name in ("h", "b", "i"):
        assert encoded[name] is tensors[name]
    assert header == {
        "tensors": {"f64": {"shape": [2], "dtype": "float64"}, "f32": {"shape": [1, 1], "dtype": "float32"}}
    }
    decoded = cast_decode(encoded, header)
    assert {k: v.dtype for k, v in decoded.items()} == {k: v.dtype for k, v in tensors.items()}
    # These values are exact in both 16-bit formats.
    for name, tensor in tensors.items():
        assert torch.equal(decoded[name], tensor)


def test_overflow_is_refused_naming_the_tensor() -> None:
    with pytest.raises(
        ValueError, match=r"tensor 'big' has values up to 1e\+05, beyond the range of torch.float16"
    ):
        cast_encode({"big": torch.tensor([1.0, -1e5])}, torch.float16)


def test_infinite_input_is_not_mistaken_for_overflow() -> None:
    encoded, _ = cast_encode({"x": torch.tensor([float("inf"), 1.0])}, torch.float16)
    assert torch.isinf(encoded["x"][0])
