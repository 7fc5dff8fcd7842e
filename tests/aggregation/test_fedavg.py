import pytest
import torch

from mpctf.aggregation.fedavg import FedAvg, FedAvgParams
from mpctf.aggregation.validate import validate_update
from mpctf.errors import UpdateRejected
from mpctf.messages import Update


def _upd(party: str, delta: list[float], samples: int, tokens: int = 1) -> Update:
    return Update(party, 1, {"w": torch.tensor(delta)}, num_samples=samples, num_tokens=tokens)


def test_fedavg_sample_weighted_by_hand() -> None:
    s = FedAvg()
    s.begin_round(1, {"w": torch.tensor([1.0, 1.0])})
    s.accumulate(_upd("a", [1.0, 0.0], samples=1))
    s.accumulate(_upd("b", [0.0, 3.0], samples=3))
    # mean delta = (1·[1,0] + 3·[0,3]) / 4 = [0.25, 2.25]
    assert torch.allclose(s.finalize()["w"], torch.tensor([1.25, 3.25]))


def test_fedavg_token_and_uniform_weights() -> None:
    for weight, expected in (("tokens", [0.9, 0.3]), ("uniform", [0.5, 1.5])):
        s = FedAvg(FedAvgParams(weight=weight))
        s.begin_round(1, {"w": torch.zeros(2)})
        s.accumulate(_upd("a", [1.0, 0.0], samples=5, tokens=9))
        s.accumulate(_upd("b", [0.0, 3.0], samples=5, tokens=1))
        assert torch.allclose(s.finalize()["w"], torch.tensor(expected))


def test_state_dict_type_tag() -> None:
    s = FedAvg()
    with pytest.raises(ValueError, match="strategy 'fedadam'"):
        s.load_state_dict({"strategy": "fedadam"})


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({}, "lacks 1 tensor"),
        ({"w": torch.zeros(2), "x": torch.zeros(1)}, "unexpected tensor"),
        ({"w": torch.zeros(3)}, "shape"),
        ({"w": torch.tensor([float("nan"), 0.0])}, "NaN or Inf"),
        ({"w": torch.tensor([100.0, 0.0])}, "exceeds the limit"),
    ],
)
def test_validate_rejects_with_party_and_reason(tensors, match) -> None:
    upd = Update("mallory", 1, tensors, num_samples=1, num_tokens=1)
    with pytest.raises(UpdateRejected, match=match) as info:
        validate_update(upd, {"w": torch.zeros(2)}, max_norm=10.0)
    assert "party 'mallory'" in str(info.value)


def test_validate_returns_norm() -> None:
    assert validate_update(_upd("a", [3.0, 4.0], 1), {"w": torch.zeros(2)}) == pytest.approx(5.0)


def test_fedavg_result_does_not_depend_on_arrival_order() -> None:
    # Updates arrive in whatever order parties finish; a resumed run must still reproduce the same floats.
    gen = torch.Generator().manual_seed(0)
    deltas = [torch.randn(10_000, generator=gen) * 10.0 ** float(e) for e in (-3, 0, 2, -1, 1)]
    results = []
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        s = FedAvg()
        s.begin_round(1, {"w": torch.zeros(10_000)})
        for i in order:
            s.accumulate(Update(f"p{i}", 1, {"w": deltas[i]}, num_samples=7 + 13 * i, num_tokens=1))
        results.append(s.finalize()["w"])
    assert results[0].dtype == torch.float32
    assert all(torch.equal(results[0], r) for r in results[1:])
