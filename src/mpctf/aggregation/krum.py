"""Krum (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
NeurIPS).

Update rule: with ``n`` updates of which at most ``f`` are Byzantine (``n > 2f + 2``), score each update by
the sum of its squared L2 distances to its ``n − f − 2`` nearest other updates,
``s(i) = Σ_{j ∈ N_i} ‖Δ_i − Δ_j‖²``, and take the best-scored one: ``x ← x + Δ_{argmin s}``. Unweighted;
buffers every update. Exchanged: as FedAvg.
"""

from __future__ import annotations

import torch

from mpctf.aggregation.base import STRATEGIES, StrategyParams
from mpctf.aggregation.buffered import BufferedStrategy, need_updates, stacked
from mpctf.aggregation.params import Count
from mpctf.messages import NamedTensors


class KrumParams(StrategyParams):
    f: Count = 1


def pairwise_sq_distances(deltas: list[NamedTensors]) -> torch.Tensor:
    """``D[i, j] = ‖Δ_i − Δ_j‖²`` over all tensors, float64 (``n × n``)."""
    n = len(deltas)
    dist = torch.zeros(n, n, dtype=torch.float64)
    for name in deltas[0]:
        flat = stacked(deltas, name).reshape(n, -1)
        # The direct difference, not the ‖a‖² + ‖b‖² − 2ab expansion, which cancels badly for close updates.
        dist += torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").double().cpu().square()
    return dist


def krum_scores(dist: torch.Tensor, f: int) -> torch.Tensor:
    """``s(i)``: the sum of the ``n − f − 2`` smallest distances from ``i`` to the others."""
    n = dist.shape[0]
    others = dist[~torch.eye(n, dtype=torch.bool)].reshape(n, n - 1)
    return others.sort(dim=1).values[:, : n - f - 2].sum(dim=1)


def krum_select(deltas: list[NamedTensors], f: int, m: int, strategy: str) -> list[int]:
    """Indices of the ``m`` best-scored updates (ties broken by arrival order)."""
    need_updates(strategy, len(deltas), 2 * f + 3, f"n > 2f + 2 with f={f}")
    scores = krum_scores(pairwise_sq_distances(deltas), f)
    return sorted(range(len(deltas)), key=lambda i: (float(scores[i]), i))[:m]


@STRATEGIES.register("krum")
class Krum(BufferedStrategy):
    Params = KrumParams
    params: KrumParams

    def combine(self, deltas: list[NamedTensors]) -> NamedTensors:
        (best,) = krum_select(deltas, self.params.f, 1, "krum")
        return {name: t.to(torch.float32) for name, t in deltas[best].items()}
