import pytest
import torch

from mpctf.aggregation.norm_bounded import NormBounded, NormBoundedParams, clip_factor


def test_clip_then_average_by_hand(upd) -> None:
    s = NormBounded(NormBoundedParams(max_norm=1.0))
    s.begin_round(1, {"w": torch.tensor([1.0, 1.0])})
    s.accumulate(upd("a", w=[3.0, 4.0]))  # norm 5 → [0.6, 0.8]
    s.accumulate(upd("b", w=[0.5, 0.0]))  # norm 0.5, kept
    assert torch.allclose(s.finalize()["w"], torch.tensor([1.55, 1.4]))
    assert not s.buffers_updates


def test_norm_spans_every_tensor(upd) -> None:
    s = NormBounded(NormBoundedParams(max_norm=2.5, weight="uniform"))
    s.begin_round(1, {"u": torch.zeros(1), "v": torch.zeros(1)})
    s.accumulate(upd("a", u=[3.0], v=[4.0]))  # global norm 5 → factor 0.5
    out = s.finalize()
    assert torch.allclose(out["u"], torch.tensor([1.5])) and torch.allclose(out["v"], torch.tensor([2.0]))


def test_clip_factor_and_bound_validation() -> None:
    assert clip_factor(0.0, 1.0) == 1.0 and clip_factor(4.0, 1.0) == 0.25
    with pytest.raises(ValueError, match=r"`max_norm` must be > 0, got -1\.0"):
        NormBoundedParams(max_norm=-1.0)
