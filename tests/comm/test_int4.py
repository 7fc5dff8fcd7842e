import torch

from mpctf.comm import build_codec
from mpctf.comm.int4 import Int4Codec


def test_registered_as_int4() -> None:
    assert isinstance(build_codec("int4"), Int4Codec)


def test_hand_computed_example() -> None:
    # Blocks of 3: [0.7, −0.3, 0.16] has scale 0.1 and codes [7, −3, 2]; the ragged [−0.5] has 0.5/7 and −7.
    # Nibbles (code + 8) [15, 5, 10, 1] pack to bytes 15 + 5·16 = 95 and 10 + 1·16 = 26.
    x = torch.tensor([[0.7, -0.3], [0.16, -0.5]], dtype=torch.float64)
    codec = build_codec("int4", {"block_size": 3})
    encoded, header = codec.encode({"x": x}, {})
    assert encoded["x::q"].dtype == torch.uint8
    assert encoded["x::q"].tolist() == [95, 26]
    assert torch.allclose(encoded["x::scale"], torch.tensor([0.1, 0.5 / 7]))
    x_hat = codec.decode(encoded, header)["x"]
    assert x_hat.dtype == torch.float64 and x_hat.shape == (2, 2)
    assert torch.allclose(x_hat, torch.tensor([[0.7, -0.3], [0.2, -0.5]], dtype=torch.float64))


def test_wire_size_is_half_a_byte_per_value_plus_a_scale_per_block() -> None:
    encoded, _ = build_codec("int4").encode({"x": torch.randn(1001)}, {})
    assert encoded["x::q"].numel() == 501
    assert encoded["x::scale"].numel() == 16
