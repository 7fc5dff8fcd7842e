import pytest
import torch

from mpctf.aggregation.fedadagrad import FedAdagrad
from mpctf.aggregation.fedopt import FedOptParams


def test_two_steps_by_hand(upd) -> None:
    s = FedAdagrad(FedOptParams(eta=0.1, tau=0.1, beta_1=0.0, weight="uniform"))
    s.begin_round(1, {"w": torch.tensor([0.0])})
    s.accumulate(upd("a", w=[0.3]))
    # β₁ = 0: m = Δ = 0.3; v = τ² + Δ² = 0.01 + 0.09 = 0.1; x = 0.1·0.3 / (√0.1 + 0.1) = 0.03 / 0.4162278
    x1 = s.finalize()
    assert x1["w"].item() == pytest.approx(0.0720759, abs=1e-6)
    s.begin_round(2, x1)
    s.accumulate(upd("a", w=[0.4]))
    # v = 0.1 + 0.16 = 0.26 (never decays); x += 0.04 / (√0.26 + 0.1) = 0.04 / 0.6099020
    assert s.finalize()["w"].item() == pytest.approx(0.0720759 + 0.0655843, abs=1e-6)
