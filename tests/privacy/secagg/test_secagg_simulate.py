"""End-to-end: the unmasked sum equals the plain sum (up to fixed-point rounding) under dropouts."""

from __future__ import annotations

import pytest
import torch

from mpctf.privacy.dp import add_gaussian_noise, clip_update, distributed_noise_std
from mpctf.privacy.secagg import SecAggParams, secure_sum

PARAMS = SecAggParams(threshold=3)


def plain_sum(updates, names):
    return {k: sum(updates[n][k] for n in names) for k in updates[names[0]]}


def assert_close_sum(result, updates, names, params=PARAMS):
    expected = plain_sum(updates, names)
    # each party's value is rounded to the nearest 1/scale: at most 0.5/scale per party
    bound = len(names) * 0.5 / params.scale + 1e-7
    for key, value in expected.items():
        assert result[key].dtype == torch.float32
        assert torch.allclose(result[key], value, atol=bound, rtol=0), key


@pytest.mark.parametrize(
    ("before_shares", "before_masked", "before_unmask"),
    [
        ((), (), ()),  # nobody drops
        ((), ("p1",), ()),  # one drops after sharing keys, before its masked input
        ((), ("p1", "p3"), ()),  # two drop before their masked input
        ((), (), ("p2",)),  # one drops after sending its masked input
        ((), (), ("p0", "p4")),  # two drop after sending their masked input
        (("p4",), ("p0",), ()),  # one never shares keys, one drops before masking
        (("p4",), (), ("p2",)),
    ],
)
def test_sum_is_exact_up_to_fixed_point_with_dropouts(updates, before_shares, before_masked, before_unmask):
    run = secure_sum(
        updates,
        PARAMS,
        drop_before_shares=before_shares,
        drop_before_masked=before_masked,
        drop_before_unmask=before_unmask,
    )
    contributors = [n for n in sorted(updates) if n not in before_shares and n not in before_masked]
    assert run.survivors == contributors  # parties that dropped after masking are still in the sum
    assert_close_sum(run.total, updates, contributors)


def test_secagg_plus_with_sparse_neighbour_graph():
    generator = torch.Generator().manual_seed(1)
    names = [f"p{i}" for i in range(9)]
    updates = {n: {"w": torch.randn(50, generator=generator) * 0.1} for n in names}
    params = SecAggParams(num_neighbours=4, threshold=3)
    run = secure_sum(updates, params, drop_before_masked=["p2"], drop_before_unmask=["p7"])
    assert_close_sum(run.total, updates, [n for n in names if n != "p2"], params)


def test_integer_inputs_sum_exactly():
    generator = torch.Generator().manual_seed(2)
    updates = {
        f"p{i}": {
            "q": torch.randint(-128, 128, (7, 3), generator=generator, dtype=torch.int8),
            "scale_weighted": torch.rand(2, generator=generator),
        }
        for i in range(4)
    }
    run = secure_sum(updates, SecAggParams(threshold=2))
    expected = sum(u["q"].to(torch.int64) for u in updates.values())
    assert run.total["q"].dtype == torch.int64
    assert torch.equal(run.total["q"], expected)
    assert torch.allclose(
        run.total["scale_weighted"], sum(u["scale_weighted"] for u in updates.values()), atol=4e-6
    )


def test_byte_counts_cover_every_stage(updates):
    run = secure_sum(updates, PARAMS)
    assert set(run.bytes_per_stage) == {"advertise", "share", "masked_input", "unmask"}
    assert set(run.seconds_per_stage) == set(run.bytes_per_stage)
    assert all(s > 0 for s in run.seconds_per_stage.values())
    # masked inputs travel as int32 (bits=32): at least 4 bytes per value per party
    values = sum(t.numel() for t in updates["p0"].values())
    assert run.bytes_per_stage["masked_input"] >= 4 * values * len(updates)


def test_distributed_dp_noise_then_secure_sum_carries_the_full_noise():
    """How the lead combines them: clip, add σC/√n noise at each party, encode, mask; the sum carries σC."""
    n, sigma, clip = 4, 0.5, 1.0
    generator = torch.Generator().manual_seed(3)
    raw = {f"p{i}": {"w": torch.randn(20_000, generator=generator)} for i in range(n)}
    clipped = {name: clip_update(u, clip)[0] for name, u in raw.items()}
    std = distributed_noise_std(sigma, clip, n)
    noised = {name: add_gaussian_noise(u, std, generator) for name, u in clipped.items()}
    params = SecAggParams(threshold=3, clip_range=4.0, scale=2.0**16)
    run = secure_sum(noised, params)
    assert_close_sum(run.total, noised, sorted(noised), params)
    noise_in_sum = run.total["w"] - sum(u["w"] for u in clipped.values())
    assert float(noise_in_sum.std()) == pytest.approx(sigma * clip, rel=0.03)
