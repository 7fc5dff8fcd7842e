import pytest
import torch

from mpctf.aggregation.validate import validate_tensors, validate_update
from mpctf.errors import UpdateRejected
from mpctf.messages import Update


def test_norm_beyond_float32_is_absurd_even_without_a_limit() -> None:
    update = Update("eve", 1, {"w": torch.tensor([3e38, 3e38])}, num_samples=1, num_tokens=1)
    with pytest.raises(UpdateRejected, match="party 'eve': tensor 'w' has a norm beyond the float32 range"):
        validate_update(update, {"w": torch.zeros(2)})


def test_integer_tensors_and_empty_counts_are_refused() -> None:
    with pytest.raises(UpdateRejected, match="expected a floating type"):
        validate_update(Update("a", 1, {"w": torch.zeros(2, dtype=torch.int64)}, 1, 1), {"w": torch.zeros(2)})
    with pytest.raises(UpdateRejected, match="num_samples=0"):
        validate_update(Update("a", 1, {"w": torch.zeros(2)}, 0, 1), {"w": torch.zeros(2)})


def test_bf16_norm_and_inf_detection() -> None:
    ref = {"w": torch.zeros(2)}
    assert (
        validate_update(Update("a", 1, {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16)}, 1, 1), ref)
        == 5.0
    )
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        validate_update(Update("a", 1, {"w": torch.tensor([float("inf"), 0.0])}, 1, 1), ref)


def test_each_party_is_checked_against_what_it_was_sent() -> None:
    small, large = {"a": torch.zeros(1, 4)}, {"a": torch.zeros(2, 4)}
    assert validate_tensors("party 'x'", {"a": torch.ones(1, 4)}, small, what="update") == 2.0
    with pytest.raises(UpdateRejected, match=r"party 'x': tensor 'a' has shape \(1, 4\), expected \(2, 4\)"):
        validate_tensors("party 'x'", {"a": torch.ones(1, 4)}, large, what="update")
    with pytest.raises(UpdateRejected, match="extra lacks 1 tensor"):
        validate_tensors("party 'x'", {}, small, what="extra")
