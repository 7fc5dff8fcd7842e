import pytest
import torch

from mpctf.aggregation.fedopt import FedOptBeta2Params
from mpctf.aggregation.fedyogi import FedYogi, yogi_second_moment

PARAMS = FedOptBeta2Params(eta=0.1, tau=0.1, beta_1=0.9, beta_2=0.99, weight="uniform")


def test_one_step_by_hand(upd) -> None:
    s = FedYogi(PARAMS)
    s.begin_round(1, {"w": torch.tensor([1.0, -1.0])})
    s.accumulate(upd("a", w=[1.0, -0.3]))
    s.accumulate(upd("b", w=[0.0, 0.2]))  # mean Δ = [0.5, −0.05], Δ² = [0.25, 0.0025]
    out = s.finalize()
    # v₀ = τ² = 0.01. sign(v₀ − Δ²) = [−1, +1] → v = [0.01 + 0.01·0.25, 0.01 − 0.01·0.0025]
    #                                              = [0.0125, 0.009975]
    # m = 0.1·Δ = [0.05, −0.005]; x += 0.1·m / (√v + 0.1) = [0.005 / 0.2118034, −0.0005 / 0.1998749]
    assert torch.allclose(s.state_dict()["v"]["w"], torch.tensor([0.0125, 0.009975]))
    assert out["w"][0].item() == pytest.approx(1.0 + 0.0236068, abs=1e-6)
    assert out["w"][1].item() == pytest.approx(-1.0 - 0.0025016, abs=1e-6)


def test_yogi_moves_v_additively_towards_delta_squared() -> None:
    v = torch.tensor([1.0, 0.0, 0.5])
    d2 = torch.tensor([0.0, 1.0, 0.5])
    # v − (1 − β₂)·d²·sign(v − d²) with β₂ = 0.5: [1 − 0, 0 + 0.5, 0.5]
    assert torch.allclose(
        yogi_second_moment(v, d2, FedOptBeta2Params(beta_2=0.5)), torch.tensor([1.0, 0.5, 0.5])
    )
