import torch

from mpctf.comm import build_codec
from mpctf.comm.int8 import Int8Codec


def test_registered_as_int8_with_default_block_of_64() -> None:
    codec = build_codec("int8")
    assert isinstance(codec, Int8Codec)
    assert codec.params.block_size == 64


def test_hand_computed_example() -> None:
    # Blocks of 3 of a 2×4 tensor: scales 2.54/127 = 0.02, 0 (all zeros), 0.1/127 (the ragged last block).
    x = torch.tensor([[2.54, -1.0, 0.3, 0.0], [0.0, 0.0, 0.1, -0.05]])
    codec = build_codec("int8", {"block_size": 3})
    encoded, header = codec.encode({"x": x}, {})
    assert sorted(encoded) == ["x::q", "x::scale"]
    assert encoded["x::q"].tolist() == [127, -50, 15, 0, 0, 0, 127, -64]  # −0.05/(0.1/127) = −63.5 → −64
    assert torch.allclose(encoded["x::scale"], torch.tensor([0.02, 0.0, 0.1 / 127]))
    assert header == {"block_size": 3, "tensors": {"x": {"shape": [2, 4], "dtype": "float32"}}}
    x_hat = codec.decode(encoded, header)["x"]
    expected = torch.tensor([[2.54, -1.0, 0.3, 0.0], [0.0, 0.0, 0.1, -64 * 0.1 / 127]])
    assert torch.allclose(x_hat, expected)
    assert float((x_hat - x).abs().max()) <= 0.1 / 127 / 2 + 1e-7


def test_wire_size_is_one_byte_per_value_plus_a_scale_per_block() -> None:
    encoded, _ = build_codec("int8").encode({"x": torch.randn(1000)}, {})
    assert encoded["x::q"].numel() * encoded["x::q"].element_size() == 1000
    assert encoded["x::scale"].numel() == 16  # ceil(1000 / 64)
