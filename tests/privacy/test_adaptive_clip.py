from __future__ import annotations

import math

import pytest
import torch

from mpctf.privacy.adaptive_clip import (
    AdaptiveClipParams,
    AdaptiveClipper,
    bounded_indicator,
    centred_indicator,
    geometric_clip_update,
    update_noise_multiplier,
)
from mpctf.privacy.dp import make_generator


def test_update_noise_multiplier_hand_computed():
    # z = 1, σ_b = 1: (1 − 1/4)^(−1/2)
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(0.75**-0.5)
    # the two mechanisms compose back to the total multiplier
    z_delta = update_noise_multiplier(1.3, 2.0)
    assert (z_delta**-2 + (2 * 2.0) ** -2) ** -0.5 == pytest.approx(1.3)


def test_count_noise_too_small_is_refused():
    with pytest.raises(ValueError, match=r"must exceed noise_multiplier / 2 = 1\.0"):
        update_noise_multiplier(2.0, 1.0)


def test_geometric_update_hand_computed():
    assert geometric_clip_update(1.0, 0.75, 0.5, 0.2) == pytest.approx(math.exp(-0.05))
    assert geometric_clip_update(2.0, 0.5, 0.5, 0.2) == 2.0


def test_indicator_is_centred_and_bounded():
    assert centred_indicator(0.5, 1.0) == 0.5
    assert centred_indicator(1.0, 1.0) == 0.5
    assert centred_indicator(1.5, 1.0) == -0.5
    assert [bounded_indicator(v) for v in (7.0, -3.0, 0.25)] == [0.5, -0.5, 0.25]


def test_the_released_fraction_adds_half_of_m_back_after_the_noise():
    params = AdaptiveClipParams(target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    clipper = AdaptiveClipper(params, initial_clip_norm=1.0, total_noise_multiplier=1.0)
    # 3 of 4 unclipped: Σ(b − ½) = 1, fraction (1 + 2) / 4 = 0.75 without noise
    assert clipper.update(1.0, 4, None) == pytest.approx(math.exp(-0.2 * 0.25))


def test_clip_norm_tracks_the_target_quantile():
    params = AdaptiveClipParams(target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    clipper = AdaptiveClipper(params, initial_clip_norm=0.1, total_noise_multiplier=1.0)
    generator = make_generator(0)
    for _ in range(300):
        norms = torch.rand(100, generator=generator) * 2.0  # median 1.0
        count = sum(centred_indicator(float(n), clipper.clip_norm) for n in norms)
        clipper.update(count, 100, generator)
    assert clipper.clip_norm == pytest.approx(1.0, rel=0.15)


def test_state_roundtrip_and_type_check():
    clipper = AdaptiveClipper(AdaptiveClipParams(), initial_clip_norm=0.3, total_noise_multiplier=1.0)
    clipper.update(5, 10, make_generator(0))
    fresh = AdaptiveClipper(AdaptiveClipParams(), initial_clip_norm=0.3, total_noise_multiplier=1.0)
    fresh.load_state_dict(clipper.state_dict())
    assert fresh.clip_norm == clipper.clip_norm
    with pytest.raises(ValueError, match="cannot be loaded into 'adaptive_clipping'"):
        fresh.load_state_dict({"type": "client_dp_accountant"})


def test_params_are_validated():
    with pytest.raises(ValueError, match="target_quantile"):
        AdaptiveClipParams(target_quantile=1.5)
    with pytest.raises(ValueError, match="extra"):
        AdaptiveClipParams(lr=0.1)
