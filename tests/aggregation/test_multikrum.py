import pytest
import torch

from mpctf.aggregation.multikrum import MultiKrum, MultiKrumParams
from mpctf.errors import FederationError

VALUES = [0.0, 1.0, 2.0, 3.0, 100.0]  # Krum scores with f = 1: [5, 2, 2, 5, 19013]


def _run(params: MultiKrumParams, upd) -> torch.Tensor:
    s = MultiKrum(params)
    s.begin_round(1, {"w": torch.zeros(1)})
    for i, v in enumerate(VALUES):
        s.accumulate(upd(f"p{i}", w=[v]))
    return s.finalize()["w"]


def test_average_of_the_m_best(upd) -> None:
    assert torch.allclose(_run(MultiKrumParams(f=1, m=3), upd), torch.tensor([1.0]))  # updates 1, 2, 0
    assert torch.allclose(_run(MultiKrumParams(f=1), upd), torch.tensor([1.5]))  # m = n − f = 4: 1, 2, 0, 3
    assert torch.allclose(_run(MultiKrumParams(f=1, m=1), upd), torch.tensor([1.0]))  # Krum


def test_m_plus_f_cannot_exceed_the_round(upd) -> None:
    with pytest.raises(FederationError, match="multikrum needs at least 6 updates"):
        _run(MultiKrumParams(f=1, m=5), upd)
