"""Multi-Krum (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS).

Update rule: score every update as Krum does (sum of squared distances to its ``n − f − 2`` nearest others),
keep the ``m`` best-scored ones (``m = n − f`` unless set) and average them:
``x ← x + (1/m) Σ_{i ∈ best} Δ_i``. ``m = 1`` is Krum. Unweighted; buffers every update. Exchanged: as FedAvg.
"""

from __future__ import annotations

from mpctf.aggregation.base import STRATEGIES, StrategyParams
from mpctf.aggregation.buffered import BufferedStrategy, need_updates, stacked
from mpctf.aggregation.krum import krum_select
from mpctf.aggregation.params import Count, PositiveCount
from mpctf.messages import NamedTensors


class MultiKrumParams(StrategyParams):
    f: Count = 1
    m: PositiveCount | None = None


@STRATEGIES.register("multikrum")
class MultiKrum(BufferedStrategy):
    Params = MultiKrumParams
    params: MultiKrumParams

    def combine(self, deltas: list[NamedTensors]) -> NamedTensors:
        f = self.params.f
        m = self.params.m if self.params.m is not None else len(deltas) - f
        need_updates("multikrum", len(deltas), m + f, f"m={m} selected plus f={f} Byzantine")
        chosen = [deltas[i] for i in krum_select(deltas, f, m, "multikrum")]
        return {name: stacked(chosen, name).mean(dim=0) for name in deltas[0]}
