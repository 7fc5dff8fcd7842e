import torch

from mpctf.aggregation.median import Median, coordinate_median


def test_coordinate_median_odd_by_hand(upd) -> None:
    s = Median()
    assert s.buffers_updates
    s.begin_round(1, {"w": torch.zeros(2)})
    for i, w in enumerate(([1.0, 10.0], [2.0, -5.0], [100.0, 0.0])):
        s.accumulate(upd(f"p{i}", samples=100 if i == 2 else 1, w=w))  # weights are ignored
    assert torch.allclose(s.finalize()["w"], torch.tensor([2.0, 0.0]))


def test_even_count_averages_the_middle_pair() -> None:
    values = torch.tensor([[1.0], [100.0], [3.0], [2.0]])
    assert torch.allclose(coordinate_median(values), torch.tensor([2.5]))
