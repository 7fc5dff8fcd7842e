"""A party's side of the privacy stage list: every registered stage's party half, run as the task says.

The worker calls :meth:`PartyPrivacy.protect` on ``local − global`` after training when the task carries
``privacy`` instructions, hands every privacy exchange (an op a stage declares) to :meth:`PartyPrivacy.handle`,
and asks :meth:`PartyPrivacy.local_dp` whether its local loop must apply per-example DP. The party halves follow
the server's instructions, not this party's config (the server's ledger accounts for what it asked for); only
sample-level DP-SGD, which protects the party's own rows, reads the party's config.
"""

from __future__ import annotations

import time
from typing import Any

from mpctf.messages import NamedTensors, RoundTask
from mpctf.privacy.config import PrivacyConfig
from mpctf.privacy.stages import STAGES, PartyContext, PartyStage


def hides_update(task: RoundTask) -> bool:
    """Whether the server asked for this round's update masked or encrypted (the uplink codecs then unused)."""
    asked = task.instructions.get("privacy", {})
    return any(STAGES.get(name).traits.hides_updates for name in asked if name in STAGES)


class PartyPrivacy:
    """The party halves of every privacy stage, for one party and a whole run."""

    def __init__(self, config: PrivacyConfig, party: str) -> None:
        self.party = party
        ordered = sorted(STAGES, key=lambda name: STAGES.get(name).order)
        self.stages: dict[str, PartyStage] = {
            name: STAGES.get(name).party_stage(party, getattr(config, name)) for name in ordered
        }
        self._by_op = {op: name for name in ordered for op in STAGES.get(name).ops}

    @property
    def ops(self) -> frozenset[str]:
        """Every task op a stage answers."""
        return frozenset(self._by_op)

    def local_dp(self) -> tuple[Any, Any] | None:
        """``(parameters, ledger keeper)`` of the per-example DP the local training loop applies, or ``None``."""
        return next((dp for stage in self.stages.values() if (dp := stage.local_dp()) is not None), None)

    def protect(
        self, task: RoundTask, delta: NamedTensors, *, num_samples: int, num_tokens: int
    ) -> tuple[NamedTensors, dict[str, Any], dict[str, float]]:
        """``(tensors to send, header, metrics)``: each stage the task names, in order (clip and noise, then the
        aggregation weight of a hidden update, then masking or encryption; an update in the clear is weighted
        by the strategy at the server)."""
        start = time.perf_counter()
        asked: dict[str, Any] = task.instructions.get("privacy", {})
        if not any(name in self.stages for name in asked):  # no stage acts on the update this round
            return delta, {}, {}
        ctx = PartyContext(task, num_samples, num_tokens, hidden=hides_update(task))
        tensors = {k: v.detach().float().cpu() for k, v in delta.items()}
        weighted = False
        for name, stage in self.stages.items():
            if name not in asked:
                continue
            if STAGES.get(name).traits.hides_updates and not weighted:
                tensors, weighted = _weighted(tensors, asked, num_samples, num_tokens), True
            tensors = stage.protect(tensors, asked[name], ctx)
        if ctx.hidden:
            ctx.metrics["privacy_seconds"] = time.perf_counter() - start
        return tensors, ctx.header, ctx.metrics

    def handle(self, task: RoundTask) -> bytes:
        """Answer one privacy exchange (``task.instructions['op']`` in :attr:`ops`)."""
        return self.stages[self._by_op[task.instructions["op"]]].handle(task)


def _weighted(
    tensors: NamedTensors, asked: dict[str, Any], num_samples: int, num_tokens: int
) -> NamedTensors:
    """``(w_k / W)·Δ_k`` when the server weights hidden updates by samples or tokens (``W`` public)."""
    weight = {"samples": num_samples, "tokens": num_tokens}.get(asked.get("weight", ""), 1)
    scale = weight / float(asked.get("weight_total", 1.0))
    return tensors if scale == 1.0 else {k: v * scale for k, v in tensors.items()}
