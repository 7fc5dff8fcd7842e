import pytest
import torch

from mpctf.aggregation.krum import Krum, KrumParams, krum_scores, pairwise_sq_distances
from mpctf.errors import FederationError

VALUES = [0.0, 1.0, 2.0, 3.0, 100.0]


def test_scores_by_hand() -> None:
    dist = pairwise_sq_distances([{"w": torch.tensor([v])} for v in VALUES])
    assert dist[0, 4].item() == pytest.approx(10000.0) and dist[1, 3].item() == pytest.approx(4.0)
    # n − f − 2 = 2 nearest: 0 → 1 + 4; 1 → 1 + 1; 2 → 1 + 1; 3 → 1 + 4; 100 → 97² + 98²
    assert krum_scores(dist, 1).tolist() == pytest.approx([5.0, 2.0, 2.0, 5.0, 97**2 + 98**2])


def test_krum_picks_the_most_central_update(upd) -> None:
    s = Krum(KrumParams(f=1))
    s.begin_round(1, {"w": torch.tensor([10.0])})
    for i, v in enumerate(VALUES):
        s.accumulate(upd(f"p{i}", w=[v]))
    assert torch.allclose(s.finalize()["w"], torch.tensor([11.0]))  # tie 1 vs 2 broken by arrival order


def test_needs_more_than_2f_plus_2_updates(upd) -> None:
    s = Krum(KrumParams(f=1))
    s.begin_round(1, {"w": torch.zeros(1)})
    for i in range(4):
        s.accumulate(upd(f"p{i}", w=[float(i)]))
    with pytest.raises(FederationError, match="krum needs at least 5 updates"):
        s.finalize()
