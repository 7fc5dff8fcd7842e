"""Coordinate-wise median (Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML).

Update rule: ``x ← x + med_k(Δ_k)`` taken coordinate by coordinate; with an even number of parties the median
is the mean of the two middle values. Unweighted; buffers every update. Exchanged: as FedAvg.
"""

from __future__ import annotations

import torch

from mpctf.aggregation.base import STRATEGIES
from mpctf.aggregation.buffered import BufferedStrategy, stacked
from mpctf.messages import NamedTensors


def coordinate_median(values: torch.Tensor) -> torch.Tensor:
    """Median over the first axis, averaging the two middle values when their number is even."""
    n = values.shape[0]
    # torch.median returns the lower middle value, which biases even-sized rounds; sort and take both.
    ordered = values.sort(dim=0).values
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


@STRATEGIES.register("median")
class Median(BufferedStrategy):
    def combine(self, deltas: list[NamedTensors]) -> NamedTensors:
        return {name: coordinate_median(stacked(deltas, name)) for name in deltas[0]}
