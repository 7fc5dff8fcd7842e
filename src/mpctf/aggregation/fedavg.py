"""FedAvg (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data").

Update rule: ``x ← x + Σ_k w_k Δ_k / Σ_k w_k`` with ``Δ_k = x_k − x`` and ``w_k`` the party's number of
samples (or tokens, or 1 for a uniform average). Kept as a running sum: O(model) server memory.

Exchanged: the global state down, ``Δ_k`` up; nothing else.
"""

from __future__ import annotations

from typing import Literal

from mpctf.aggregation.base import STRATEGIES, Strategy, StrategyParams, sum_as_float32, weighted_sum_into
from mpctf.aggregation.ops import apply_delta
from mpctf.aggregation.validate import validate_update
from mpctf.errors import UpdateRejected
from mpctf.messages import NamedTensors, Update


class FedAvgParams(StrategyParams):
    weight: Literal["samples", "tokens", "uniform"] = "samples"


def update_weight(update: Update, weight: str) -> float:
    """The aggregation weight of one update under the ``weight`` rule; rejects a weight of 0."""
    if weight == "samples":
        value = float(update.num_samples)
    elif weight == "tokens":
        value = float(update.num_tokens)
    else:
        value = 1.0
    if value <= 0:
        raise UpdateRejected(f"party {update.party!r}: weight by {weight} is {value:g}, must be > 0")
    return value


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    aggregates_by_mean = True

    Params = FedAvgParams
    params: FedAvgParams

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        self._global = global_state
        self._sum: NamedTensors | None = None
        self._total = 0.0

    def accumulate(self, update: Update) -> None:
        self._check(update)
        self._add(update.tensors, update_weight(update, self.params.weight))

    def _check(self, update: Update) -> float:
        """Validate ``update`` against what its party was sent; the update's L2 norm."""
        return validate_update(update, self.state_for_party(update.party, self._global))

    def _add(self, tensors: NamedTensors, weight: float, *, scale: float = 1.0) -> None:
        """Fold ``scale · tensors`` into the running sum with aggregation weight ``weight``."""
        self._sum = weighted_sum_into(self._sum, tensors, weight * scale)
        self._total += weight

    def mean_delta(self) -> NamedTensors:
        """The weighted mean of this round's deltas (used by FedAvg and by server optimizers built on it).

        Divides the running sum in place, so the server never holds a second model-sized copy; call it once
        per round, from ``finalize``.
        """
        if self._sum is None or self._total <= 0:
            raise RuntimeError("finalize() called before any update was accumulated")
        mean, self._sum = self._sum, None
        return sum_as_float32(mean, self._total)

    def finalize(self) -> NamedTensors:
        return apply_delta(self._global, self.mean_delta())
