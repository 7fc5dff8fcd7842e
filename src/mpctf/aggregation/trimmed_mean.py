"""Coordinate-wise trimmed mean (Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML).

Update rule: per coordinate, drop the ``⌊β n⌋`` largest and the ``⌊β n⌋`` smallest of the ``n`` parties'
values and average the rest: ``x ← x + trmean_β(Δ_1 … Δ_n)``. Unweighted; buffers every update.
Exchanged: as FedAvg.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch

from mpctf.aggregation.base import STRATEGIES, StrategyParams
from mpctf.aggregation.buffered import BufferedStrategy, stacked
from mpctf.aggregation.params import in_range
from mpctf.messages import NamedTensors


class TrimmedMeanParams(StrategyParams):
    beta: Annotated[float, in_range(0.0, 0.5, high_open=True)] = 0.1


def trimmed_mean(values: torch.Tensor, trim: int) -> torch.Tensor:
    """Mean over the first axis, per coordinate, of all but the ``trim`` smallest and ``trim`` largest."""
    n = values.shape[0]
    return values.sort(dim=0).values[trim : n - trim].mean(dim=0)


@STRATEGIES.register("trimmed_mean")
class TrimmedMean(BufferedStrategy):
    Params = TrimmedMeanParams
    params: TrimmedMeanParams

    def combine(self, deltas: list[NamedTensors]) -> NamedTensors:
        trim = math.floor(
            self.params.beta * len(deltas)
        )  # β < 1/2, so at least one value per coordinate stays
        return {name: trimmed_mean(stacked(deltas, name), trim) for name in deltas[0]}
