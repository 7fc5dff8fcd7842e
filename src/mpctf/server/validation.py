"""Federated validation: each party scores the global model on a held-out slice of its own rows.

Only metrics leave a party. The server averages them weighted by each party's validation rows, picks the best
round on that average (never on the test set) and stops the run once ``data.validation.patience`` scored rounds
have passed without a better score. The state a party scores travels uncompressed (it is sent only after scored
rounds), and its bytes count in the run's totals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mpctf.config import ValidationConfig
from mpctf.messages import NamedTensors, RoundTask, unpack
from mpctf.runtime.base import Backend

#: Prefix of the combined validation metrics in a round's record (``val_accuracy``, ``val_eval_loss``, ...).
PREFIX = "val_"


@dataclass
class ValidationRound:
    """One round's validation: the combined metrics, each party's report, and the bytes it moved."""

    metrics: dict[str, float]
    reports: list[dict[str, Any]] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0


def combine(reports: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The row-weighted mean of every metric all reports share, as ``val_<metric>``, with ``val_samples`` and
    ``val_parties``; empty when no report came back."""
    reports = [r for r in reports if r["num_samples"] > 0]
    if not reports:
        return {}
    total = sum(r["num_samples"] for r in reports)
    shared = set.intersection(*(set(r["metrics"]) for r in reports))
    combined = {
        f"{PREFIX}{key}": sum(r["metrics"][key] * r["num_samples"] for r in reports) / total
        for key in sorted(shared)
    }
    return {**combined, f"{PREFIX}samples": float(total), f"{PREFIX}parties": float(len(reports))}


class FederatedValidation:
    """Asks the parties for their validation metrics and keeps the best round and the patience count."""

    def __init__(self, config: ValidationConfig, metric: str, higher_is_better: bool) -> None:
        self.config, self.metric, self.higher_is_better = config, metric, higher_is_better
        self.best_round: int | None = None
        self.best_score: float | None = None
        #: Scored rounds with validation since the best one.
        self.since_best = 0

    def ask(
        self, round_num: int, states: dict[str, NamedTensors], backend: Backend, timeout_s: float
    ) -> ValidationRound:
        """Send each party the state it would train from and collect its metrics."""

        def task(state: NamedTensors) -> Callable[[], bytes]:
            return lambda: RoundTask(round_num, state, {"op": "validate"}).to_bytes()

        result = ValidationRound(metrics={})
        for reply in backend.train_round({p: task(s) for p, s in states.items()}, timeout_s):
            result.bytes_down += reply.sent_bytes
            if reply.payload is None:
                result.reports.append({"party": reply.party, "status": "failed", "reason": reply.error})
                continue
            result.bytes_up += len(reply.payload)
            _, header = unpack(reply.payload)
            result.reports.append(
                {
                    "party": reply.party,
                    "status": "ok",
                    "num_samples": int(header["num_samples"]),
                    "metrics": {k: float(v) for k, v in header["metrics"].items()},
                }
            )
        result.metrics = combine(r for r in result.reports if r["status"] == "ok")
        self.observe(round_num, result.metrics)
        return result

    def observe(self, round_num: int, metrics: dict[str, Any]) -> None:
        """Count one round's combined metrics towards the best round and the patience."""
        score = metrics.get(PREFIX + self.metric)
        if score is None:
            return
        gain = (score - self.best_score) if self.best_score is not None else float("inf")
        if not self.higher_is_better and self.best_score is not None:
            gain = -gain
        if gain > self.config.min_delta:
            self.best_round, self.best_score, self.since_best = round_num, float(score), 0
        else:
            self.since_best += 1

    def restore(self, records: Iterable[dict[str, Any]], up_to: int) -> None:
        """Replay the logged rounds through ``up_to`` (a resumed run continues the same count)."""
        for r in records:
            if r.get("event") == "round" and r.get("round", 0) <= up_to:
                self.observe(r["round"], r)

    @property
    def exhausted(self) -> bool:
        """Whether ``patience`` scored rounds have passed without a better score."""
        return self.config.patience is not None and self.since_best >= self.config.patience

    def summary(self) -> dict[str, Any]:
        """``best_round`` and its score, for a round's record and the run's end."""
        if self.best_round is None:
            return {}
        return {"best_round": self.best_round, f"best_{PREFIX}{self.metric}": self.best_score}
