from __future__ import annotations

import pytest
import torch

from mpctf.privacy.layout import TensorLayout, flatten, unflatten


def test_flatten_sorts_names_and_roundtrips_dtypes():
    tensors = {"b": torch.arange(6, dtype=torch.int8).reshape(2, 3), "a": torch.tensor([0.5, 1.5])}
    flat, layout = flatten(tensors, torch.float64)
    assert layout.names == ("a", "b")
    assert flat.tolist() == [0.5, 1.5, 0, 1, 2, 3, 4, 5]
    back = unflatten(flat, TensorLayout.from_json(layout.to_json()))
    assert back["b"].dtype == torch.int8 and torch.equal(back["b"], tensors["b"])
    assert torch.equal(back["a"], tensors["a"])


def test_unflatten_refuses_wrong_length():
    _, layout = flatten({"a": torch.zeros(3)}, torch.float32)
    with pytest.raises(ValueError, match="4 values, layout expects 3"):
        unflatten(torch.zeros(4), layout)
