"""The label-share attack recovers a non-negative mix of per-label references."""

import numpy as np
import pytest
import torch

from mpctf.privacy.label_inference import flatten, infer_label_shares, share_error


def test_an_exact_mix_gives_its_shares() -> None:
    u1, u2 = np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])
    shares = infer_label_shares(0.3 * u1 + 1.4 * u2, [u1, u2])
    assert shares == pytest.approx([0.3 / 1.7, 1.4 / 1.7])


def test_a_noisy_mix_of_random_references_is_read_closely() -> None:
    rng = np.random.default_rng(0)
    refs = [rng.normal(size=5000) for _ in range(3)]
    update = 0.2 * refs[0] + 0.5 * refs[1] + 0.3 * refs[2] + 0.1 * rng.normal(size=5000)
    assert share_error(infer_label_shares(update, refs), [0.2, 0.5, 0.3]) < 0.01


def test_an_update_against_every_reference_reads_as_uniform() -> None:
    u1, u2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert infer_label_shares(np.array([-1.0, -1.0]), [u1, u2]) == pytest.approx([0.5, 0.5])


def test_flatten_orders_by_name() -> None:
    flat = flatten({"b": torch.tensor([3.0]), "a": torch.tensor([[1.0, 2.0]])})
    assert list(flat) == [1.0, 2.0, 3.0]
