import math

import pytest
import torch

from mpctf.aggregation.dynamic import DynamicParams, DynamicWeighting, dynamic_log_weight
from mpctf.errors import UpdateRejected


def _run(params: DynamicParams, *updates) -> torch.Tensor:
    s = DynamicWeighting(params)
    s.begin_round(1, {"w": torch.zeros(2)})
    for u in updates:
        s.accumulate(u)
    return s.finalize()["w"]


def test_loss_and_volume_weights_by_hand(upd) -> None:
    a = upd("a", samples=1, metrics={"loss": 2.0}, w=[1.0, 0.0])
    b = upd("b", samples=3, metrics={"loss": 0.5}, w=[0.0, 1.0])
    # w = n·L: a = 2, b = 1.5 → [2, 1.5] / 3.5
    assert torch.allclose(_run(DynamicParams(), a, b), torch.tensor([2 / 3.5, 1.5 / 3.5]))


def test_bandwidth_factor_by_hand(upd) -> None:
    a = upd("a", samples=1, metrics={"loss": 2.0, "bandwidth_bps": 1e6}, w=[1.0, 0.0])
    b = upd("b", samples=3, metrics={"loss": 0.5, "bandwidth_bps": 4e6}, w=[0.0, 1.0])
    # w = n·L·b: a = 2e6, b = 6e6 → [0.25, 0.75]
    assert torch.allclose(_run(DynamicParams(bandwidth_power=1.0), a, b), torch.tensor([0.25, 0.75]))
    # q = 0, a = 0.5: w = √n: [1, √3]
    expected = torch.tensor([1.0, 3**0.5]) / (1 + 3**0.5)
    assert torch.allclose(_run(DynamicParams(loss_power=0.0, volume_power=0.5), a, b), expected)


def test_weight_formula_and_tokens(upd) -> None:
    u = upd("a", samples=4, tokens=9, metrics={"loss": 4.0, "bandwidth_bps": 16.0}, w=[0.0])
    params = DynamicParams(volume="tokens", volume_power=1.0, loss_power=0.5, bandwidth_power=0.25)
    assert dynamic_log_weight(u, params) == pytest.approx(math.log(9 * 2 * 2))


def test_missing_or_bad_metrics_are_rejected_before_anything_is_added(upd) -> None:
    s = DynamicWeighting(DynamicParams(bandwidth_power=1.0))
    s.begin_round(1, {"w": torch.zeros(1)})
    with pytest.raises(UpdateRejected, match="metric 'loss' is None"):
        s.accumulate(upd("a", w=[5.0]))
    with pytest.raises(UpdateRejected, match=r"metric 'bandwidth_bps' is 0\.0"):
        s.accumulate(upd("a", metrics={"loss": 1.0, "bandwidth_bps": 0.0}, w=[5.0]))
    with pytest.raises(UpdateRejected, match="metric 'loss' is nan"):
        s.accumulate(upd("a", metrics={"loss": float("nan"), "bandwidth_bps": 1.0}, w=[5.0]))
    s.accumulate(upd("b", metrics={"loss": 1.0, "bandwidth_bps": 1.0}, w=[1.0]))
    assert torch.allclose(s.finalize()["w"], torch.tensor([1.0]))


def test_huge_bandwidths_do_not_overflow(upd) -> None:
    a = upd("a", metrics={"loss": 1.0, "bandwidth_bps": 1e200}, w=[1.0, 0.0])
    b = upd("b", metrics={"loss": 1.0, "bandwidth_bps": 1e200}, w=[3.0, 0.0])
    assert torch.allclose(_run(DynamicParams(bandwidth_power=2.0), a, b), torch.tensor([2.0, 0.0]))
