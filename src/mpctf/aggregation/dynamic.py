"""Dynamic weighting: FedAvg whose weights follow each party's loss, data volume and, optionally, bandwidth.

Paper: the loss term is the reweighting of q-FFL (Li, Sanjabi, Beirami and Smith, 2020, "Fair Resource
Allocation in Federated Learning", ICLR), where a party's weight grows with its loss to the power ``q``; the
volume and bandwidth factors are MPCTF's.

Update rule: ``w_k = n_k^a · L_k^q · b_k^β`` and ``x ← x + Σ_k w_k Δ_k / Σ_k w_k``, where ``n_k`` is the
party's samples (or tokens), ``L_k`` its training loss this round (``update.metrics["loss"]``) and ``b_k``
its measured bandwidth in bit/s (``update.metrics["bandwidth_bps"]``). ``a = 1, q = 0, β = 0`` is FedAvg;
``q > 0`` leans towards parties the global model serves worst; ``β > 0`` leans towards well-connected
parties (for example to favour the parties whose updates are cheapest to wait for when rounds are
bandwidth-bound). Only
ratios of weights matter, so no normalisation across parties is needed and the sum stays a running sum.
Exchanged: as FedAvg; the metrics travel in the update header.
"""

from __future__ import annotations

import math
from typing import Literal

from mpctf.aggregation.base import STRATEGIES, StrategyParams
from mpctf.aggregation.fedavg import FedAvg
from mpctf.aggregation.params import NonNegative
from mpctf.errors import UpdateRejected
from mpctf.messages import NamedTensors, Update

LOSS = "loss"
BANDWIDTH = "bandwidth_bps"
#: Weight ratios beyond e^700 (about 1e304) are clamped there: float64 ends near e^709.
_MAX_LOG_RATIO = 700.0


class DynamicParams(StrategyParams):
    volume: Literal["samples", "tokens"] = "samples"
    volume_power: NonNegative = 1.0
    loss_power: NonNegative = 1.0
    bandwidth_power: NonNegative = 0.0


def _positive_metric(update: Update, key: str) -> float:
    value = update.metrics.get(key)
    if value is None or not math.isfinite(value) or value <= 0:
        raise UpdateRejected(
            f"party {update.party!r}: metric {key!r} is {value!r}, dynamic weighting needs it > 0"
        )
    return value


def dynamic_log_weight(update: Update, params: DynamicParams) -> float:
    """``log(n^a · L^q · b^β)`` for one update; a factor whose exponent is 0 needs no metric."""
    volume = update.num_samples if params.volume == "samples" else update.num_tokens
    if volume <= 0:
        raise UpdateRejected(f"party {update.party!r}: {params.volume} is {volume}, must be > 0")
    log_w = params.volume_power * math.log(volume)
    if params.loss_power:
        log_w += params.loss_power * math.log(_positive_metric(update, LOSS))
    if params.bandwidth_power:
        log_w += params.bandwidth_power * math.log(_positive_metric(update, BANDWIDTH))
    return log_w


@STRATEGIES.register("dynamic")
class DynamicWeighting(FedAvg):
    aggregates_by_mean = False

    Params = DynamicParams  # type: ignore[assignment]
    params: DynamicParams  # type: ignore[assignment]

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        super().begin_round(round_num, global_state)
        self._log_ref: float | None = None

    def accumulate(self, update: Update) -> None:
        log_w = dynamic_log_weight(update, self.params)
        self._check(update)
        # Weights are taken relative to the round's first update: only their ratios matter, and bandwidths of
        # 1e9 bit/s to a power would overflow a float long before those ratios do.
        if self._log_ref is None:
            self._log_ref = log_w
        self._add(update.tensors, math.exp(min(log_w - self._log_ref, _MAX_LOG_RATIO)))
