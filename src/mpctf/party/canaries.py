"""A party's canary rows: the one-run audit of its sample-level DP-SGD (``privacy.audit.canary_rows``).

Steinke, Nasr and Jagielski (NeurIPS 2023) bound ε from below with one training run. The party builds ``m``
canary rows (random tokens: :meth:`mpctf.data.task_base.Task.canary`), flips a secret fair coin for each, and mixes
the heads into its own training rows, where they are chunked, Poisson-sampled and clipped like every other row.
Before its first round it scores every canary by its loss under the model it received; after each scored round
(the evaluation schedule, which the server puts in the task), by its loss under the model it trained, which is
exactly what it releases (global state plus its DP-SGD update), so the score is post-processing of the mechanism
the party's ledger accounts for. A canary whose loss fell the most was probably trained on:
:func:`mpctf.privacy.audit.one_run_audit` turns the guesses that are right into a lower bound on ε at confidence
``1 − alpha``. A bound above the party's own Opacus ε means the ledger is wrong.

The canaries are real training rows (half of them are trained on), so they cost the party a little accuracy; and
the bound is only as strong as the run lets the canaries be learned: a few steps at a small ε leave it near 0.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from random import Random

import torch

from mpctf.data.task_base import Example, Task
from mpctf.privacy.config import AuditParams


class CanaryRows:
    """The canaries of one party for a whole run."""

    def __init__(self, task: Task, like: Sequence[Example], params: AuditParams) -> None:
        if not like:
            raise ValueError("canary rows are shaped like the party's own rows, and it has none")
        # Secret: whoever knew which canaries were trained on could fake the audit.
        rng = Random(secrets.randbits(64))
        self.params = params
        self.task = task
        self.rows = [task.canary(like[rng.randrange(len(like))], rng) for _ in range(params.canary_rows)]
        self.included = [rng.random() < 0.5 for _ in self.rows]
        self._baseline: list[float] | None = None
        self._seconds = 0.0  # spent on scoring since the last report

    def trained(self) -> list[Example]:
        """The canaries that join the party's training rows."""
        return [row for row, kept in zip(self.rows, self.included, strict=True) if kept]

    def _losses(self, model: torch.nn.Module, device: torch.device, batch_size: int) -> list[float]:
        began = time.perf_counter()
        scored = self.task.row_nll(model, self.rows, batch_size=batch_size, device=device)
        self._seconds += time.perf_counter() - began
        return [total / max(count, 1) for total, count in scored]

    def before_training(self, model: torch.nn.Module, device: torch.device, batch_size: int) -> None:
        """Score the canaries under the first model the party receives (once: later calls do nothing)."""
        if self._baseline is None:
            self._baseline = self._losses(model, device, batch_size)

    def audit(
        self, model: torch.nn.Module, device: torch.device, batch_size: int, delta: float
    ) -> dict[str, float]:
        """The lower bound on ε from the canaries' loss drops under ``model`` (what the party releases), and the
        seconds the audit's scoring took since the last report (``audit_rows_seconds``)."""
        from mpctf.privacy.audit import one_run_audit

        assert self._baseline is not None, "before_training scores the baseline first"
        now = self._losses(model, device, batch_size)
        drops = [before - after for before, after in zip(self._baseline, now, strict=True)]
        bound, guesses, right = one_run_audit(drops, self.included, delta, 1.0 - self.params.alpha)
        seconds, self._seconds = self._seconds, 0.0
        return {
            "audit_rows_epsilon_lower_bound": bound,
            "audit_rows_guesses": float(guesses),
            "audit_rows_correct": float(right),
            "audit_rows_trained": float(sum(self.included)),
            "audit_rows_seconds": seconds,
        }
