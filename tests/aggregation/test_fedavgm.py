import pytest
import torch

from mpctf.aggregation.fedavgm import FedAvgM, FedAvgMParams


def test_two_rounds_of_server_momentum_by_hand(upd) -> None:
    s = FedAvgM(FedAvgMParams(server_lr=2.0, momentum=0.5))
    s.begin_round(1, {"w": torch.tensor([1.0, 1.0])})
    s.accumulate(upd("a", samples=1, w=[1.0, 0.0]))
    s.accumulate(upd("b", samples=3, w=[0.0, 3.0]))
    # mean Δ = [0.25, 2.25]; v = [0.25, 2.25]; x = 1 + 2·v = [1.5, 5.5]
    x1 = s.finalize()
    assert torch.allclose(x1["w"], torch.tensor([1.5, 5.5]))
    s.begin_round(2, x1)
    s.accumulate(upd("a", samples=1, w=[1.0, 0.0]))
    # v = 0.5·[0.25, 2.25] + [1, 0] = [1.125, 1.125]; x = [1.5, 5.5] + 2·v = [3.75, 7.75]
    assert torch.allclose(s.finalize()["w"], torch.tensor([3.75, 7.75]))


def test_zero_momentum_unit_lr_is_fedavg(upd) -> None:
    s = FedAvgM(FedAvgMParams(server_lr=1.0, momentum=0.0))
    for r in (1, 2):
        s.begin_round(r, {"w": torch.tensor([1.0, 1.0])})
        s.accumulate(upd("a", samples=1, w=[1.0, 0.0]))
        s.accumulate(upd("b", samples=3, w=[0.0, 3.0]))
        assert torch.allclose(s.finalize()["w"], torch.tensor([1.25, 3.25]))


def test_momentum_survives_state_round_trip(upd) -> None:
    s = FedAvgM(FedAvgMParams(momentum=0.5))
    s.begin_round(1, {"w": torch.zeros(2)})
    s.accumulate(upd("a", w=[2.0, 0.0]))
    s.finalize()
    saved = s.state_dict()
    assert saved["strategy"] == "fedavgm" and torch.equal(saved["velocity"]["w"], torch.tensor([2.0, 0.0]))
    t = FedAvgM(FedAvgMParams(momentum=0.5))
    t.load_state_dict(saved)
    t.begin_round(2, {"w": torch.zeros(2)})
    t.accumulate(upd("a", w=[0.0, 0.0]))
    # v = 0.5·[2, 0] + 0 = [1, 0]
    assert torch.allclose(t.finalize()["w"], torch.tensor([1.0, 0.0]))


def test_momentum_must_be_below_one() -> None:
    with pytest.raises(ValueError, match=r"`momentum` must be in \[0, 1\), got 1.0"):
        FedAvgMParams(momentum=1.0)
