import torch

from mpctf.comm import fp32_bytes, tensor_bytes


def test_fp32_bytes_counts_four_bytes_per_value_whatever_the_dtype() -> None:
    tensors = {"a": torch.zeros(2, 3, dtype=torch.float16), "b": torch.zeros(5, dtype=torch.int8)}
    assert fp32_bytes(tensors) == 4 * 11


def test_tensor_bytes_counts_each_dtype_at_its_size() -> None:
    tensors = {"a": torch.zeros(2, 3, dtype=torch.float16), "b": torch.zeros(5, dtype=torch.int8)}
    assert tensor_bytes(tensors) == 2 * 6 + 5


def test_empty_dict_is_zero_bytes() -> None:
    assert fp32_bytes({}) == 0
    assert tensor_bytes({}) == 0
