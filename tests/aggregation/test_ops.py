import pytest
import torch

from mpctf.aggregation.ops import apply_delta, require_same_keys


def test_apply_delta_keeps_dtypes_and_untouched_tensors() -> None:
    g = {"a": torch.tensor([1.0], dtype=torch.bfloat16), "b": torch.tensor([2.0])}
    out = apply_delta(g, {"a": torch.tensor([0.5])})
    assert out["a"].dtype == torch.bfloat16 and out["a"].item() == 1.5
    assert out["b"] is g["b"]


def test_require_same_keys_names_the_odd_one() -> None:
    with pytest.raises(ValueError, match="tensor 'c' is in only one of them"):
        require_same_keys({"a": torch.zeros(1)}, {"a": torch.zeros(1), "c": torch.zeros(1)}, "momentum")
