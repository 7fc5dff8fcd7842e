import pytest
import torch

from mpctf.comm.per_tensor import decode_each, dtype_from_name, dtype_name, encode_each


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8])
def test_dtype_name_round_trips(dtype: torch.dtype) -> None:
    assert dtype_from_name(dtype_name(dtype)) == dtype


def test_dtype_name_is_short() -> None:
    assert dtype_name(torch.bfloat16) == "bfloat16"


@pytest.mark.parametrize("name", ["float33", "Tensor", "nn"])
def test_unknown_dtype_name_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_from_name(name)


def _halve(name: str, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
    return {"a": x[..., :1], "b": x[..., 1:]}, {"note": name}


def _join(
    parts: dict[str, torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype, info: dict
) -> torch.Tensor:
    return torch.cat([parts["a"], parts["b"]], dim=-1).reshape(shape).to(dtype)


def test_parts_are_named_with_suffixes_and_other_tensors_pass_through() -> None:
    tensors = {"w": torch.tensor([1.0, 2.0, 3.0]), "i": torch.tensor([7, 8])}
    encoded, infos = encode_each(tensors, _halve)
    assert sorted(encoded) == ["i", "w::a", "w::b"]
    assert infos == {"w": {"shape": [3], "dtype": "float32", "note": "w"}}
    decoded = decode_each(encoded, infos, ("a", "b"), _join)
    assert torch.equal(decoded["w"], tensors["w"])
    assert torch.equal(decoded["i"], tensors["i"])


def test_colliding_encoded_key_is_rejected() -> None:
    tensors = {"w": torch.ones(2), "w::a": torch.tensor([1, 2])}
    with pytest.raises(ValueError, match="collides"):
        encode_each(tensors, _halve)


def test_missing_part_is_rejected() -> None:
    encoded, infos = encode_each({"w": torch.ones(2)}, _halve)
    del encoded["w::b"]
    with pytest.raises(ValueError, match="lack 'w::b'"):
        decode_each(encoded, infos, ("a", "b"), _join)
