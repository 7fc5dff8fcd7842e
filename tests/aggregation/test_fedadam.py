import math

import pytest
import torch

from mpctf.aggregation.fedadam import FedAdam
from mpctf.aggregation.fedopt import FedOptBeta2Params
from mpctf.aggregation.fedyogi import FedYogi

PARAMS = FedOptBeta2Params(eta=0.1, tau=0.1, beta_1=0.9, beta_2=0.99, weight="uniform")


def _round(s, upd, x) -> dict:
    s.begin_round(1, {"w": torch.tensor(x)})
    s.accumulate(upd("a", w=[1.0, -0.3]))
    s.accumulate(upd("b", w=[0.0, 0.1]))  # mean Δ = [0.5, −0.1]
    return s.finalize()


def test_one_step_by_hand(upd) -> None:
    out = _round(FedAdam(PARAMS), upd, [1.0, -1.0])
    # m = 0.1·Δ = [0.05, −0.01]; v = 0.99·τ² + 0.01·Δ² = [0.0099 + 0.0025, 0.0099 + 0.0001] = [0.0124, 0.01]
    # x += 0.1·m / (√v + 0.1) = [0.005 / (0.111355 + 0.1), −0.001 / 0.2] = [0.0236569, −0.005]
    assert out["w"][0].item() == pytest.approx(1.0 + 0.005 / (math.sqrt(0.0124) + 0.1), rel=1e-6)
    assert out["w"][0].item() == pytest.approx(1.0236569, abs=1e-6)
    assert out["w"][1].item() == pytest.approx(-1.005, abs=1e-6)


def test_moments_round_trip_and_refuse_yogi_state(upd) -> None:
    s = FedAdam(PARAMS)
    _round(s, upd, [1.0, -1.0])
    saved = s.state_dict()
    assert saved["strategy"] == "fedadam"
    assert torch.allclose(saved["m"]["w"], torch.tensor([0.05, -0.01]))
    assert torch.allclose(saved["v"]["w"], torch.tensor([0.0124, 0.01]))
    t = FedAdam(PARAMS)
    t.load_state_dict(saved)
    assert torch.equal(_round(s, upd, [0.0, 0.0])["w"], _round(t, upd, [0.0, 0.0])["w"])
    with pytest.raises(ValueError, match=r"'fedadam'.*'fedyogi'"):
        FedYogi(PARAMS).load_state_dict(saved)


def test_moments_must_match_the_global_state(upd) -> None:
    s = FedAdam(PARAMS)
    _round(s, upd, [1.0, -1.0])
    with pytest.raises(ValueError, match="does not match fedadam's moments"):
        s.begin_round(2, {"u": torch.zeros(2)})


def test_beta_2_message() -> None:
    with pytest.raises(ValueError, match=r"`beta_2` must be in \[0, 1\), got 1.2"):
        FedOptBeta2Params(beta_2=1.2)
    with pytest.raises(ValueError, match=r"`eta` must be > 0, got 0\.0"):
        FedOptBeta2Params(eta=0.0)
