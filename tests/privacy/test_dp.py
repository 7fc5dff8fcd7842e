from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctf.privacy import dp


def test_clip_update_hand_computed():
    update = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}  # global norm 5
    clipped, norm = dp.clip_update(update, 1.0)
    assert norm == 5.0
    assert clipped["a"].tolist() == pytest.approx([0.6, 0.0])
    assert clipped["b"].shape == (1, 1) and clipped["b"].item() == pytest.approx(0.8)


def test_clip_update_leaves_small_and_zero_updates_alone():
    update = {"a": torch.tensor([0.3, 0.4])}
    clipped, norm = dp.clip_update(update, 1.0)
    assert norm == pytest.approx(0.5) and torch.equal(clipped["a"], update["a"])
    zeros, zero_norm = dp.clip_update({"a": torch.zeros(3)}, 1.0)
    assert zero_norm == 0.0 and torch.equal(zeros["a"], torch.zeros(3))
    with pytest.raises(ValueError, match="`clip_norm` must be > 0"):
        dp.clip_update(update, 0.0)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=20),
    clip=st.floats(0.01, 100),
)
def test_clipped_norm_never_exceeds_bound_and_direction_is_kept(values, clip):
    update = {
        "x": torch.tensor(values[: len(values) // 2 + 1]),
        "y": torch.tensor(values[len(values) // 2 + 1 :]),
    }
    clipped, norm = dp.clip_update(update, clip)
    assert dp.global_l2_norm(clipped) <= clip * (1 + 1e-5)
    if norm > 0:
        factor = min(1.0, clip / norm)
        for key in update:
            assert torch.allclose(clipped[key], update[key] * factor, rtol=1e-5, atol=1e-6)


def test_noise_std_formulas():
    assert dp.central_noise_std(1.2, 0.5) == pytest.approx(0.6)
    assert dp.distributed_noise_std(1.2, 0.5, 4) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="`num_parties` must be >= 1"):
        dp.distributed_noise_std(1.0, 1.0, 0)


def test_noise_is_reproducible_with_a_seeded_generator():
    tensors = {"b": torch.zeros(5), "a": torch.zeros(2, 2)}
    first = dp.gaussian_noise_like(tensors, 1.0, dp.make_generator(11))
    second = dp.gaussian_noise_like(tensors, 1.0, dp.make_generator(11))
    assert all(torch.equal(first[k], second[k]) for k in tensors)
    other = dp.gaussian_noise_like(tensors, 1.0, dp.make_generator(12))
    assert not torch.equal(first["a"], other["a"])


def test_unseeded_generators_differ():
    assert not torch.equal(
        torch.randn(8, generator=dp.make_generator()), torch.randn(8, generator=dp.make_generator())
    )


def test_distributed_shares_add_up_to_central_noise():
    n, sigma, clip = 9, 0.8, 2.0
    generator = dp.make_generator(0)
    zeros = {"w": torch.zeros(50_000)}
    std = dp.distributed_noise_std(sigma, clip, n)
    total = sum(dp.add_gaussian_noise(zeros, std, generator)["w"] for _ in range(n))
    assert float(total.std()) == pytest.approx(dp.central_noise_std(sigma, clip), rel=0.02)
    assert abs(float(total.mean())) < 0.05


def test_noised_mean_without_noise_is_the_mean_and_with_noise_has_the_right_spread():
    clipped_sum = {"w": torch.full((40_000,), 6.0)}
    exact = dp.noised_mean(
        clipped_sum, noise_multiplier=0.0, clip_norm=1.0, denominator=3, generator=dp.make_generator(1)
    )
    assert torch.equal(exact["w"], torch.full((40_000,), 2.0))
    noisy = dp.noised_mean(
        clipped_sum, noise_multiplier=1.5, clip_norm=2.0, denominator=3, generator=dp.make_generator(1)
    )
    assert float(noisy["w"].std()) == pytest.approx(1.5 * 2.0 / 3, rel=0.02)
    with pytest.raises(ValueError, match="`denominator` must be > 0"):
        dp.noised_mean(
            clipped_sum, noise_multiplier=1.0, clip_norm=1.0, denominator=0, generator=dp.make_generator(1)
        )


def test_global_norm_is_float64_exact():
    assert dp.global_l2_norm({"a": torch.tensor([1e20, 1e20])}) == pytest.approx(math.sqrt(2) * 1e20)
