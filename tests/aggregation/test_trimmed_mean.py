import pytest
import torch

from mpctf.aggregation.trimmed_mean import TrimmedMean, TrimmedMeanParams, trimmed_mean


def test_trimmed_mean_by_hand(upd) -> None:
    s = TrimmedMean(TrimmedMeanParams(beta=0.25))  # n = 4 → trim ⌊1⌋ per side
    s.begin_round(1, {"w": torch.zeros(2)})
    for i, w in enumerate(([1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [100.0, 2.0])):
        s.accumulate(upd(f"p{i}", w=w))
    assert torch.allclose(s.finalize()["w"], torch.tensor([2.5, 0.5]))


def test_small_beta_trims_nothing() -> None:
    values = torch.tensor([[1.0], [2.0], [3.0], [100.0]])
    assert torch.allclose(trimmed_mean(values, 0), torch.tensor([26.5]))


def test_beta_bound() -> None:
    with pytest.raises(ValueError, match=r"`beta` must be in \[0, 0.5\), got 0.5"):
        TrimmedMeanParams(beta=0.5)
