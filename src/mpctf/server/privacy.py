"""The server's side of the privacy stage list: it runs the stages a run's ``privacy:`` section enables.

The round loop calls, whatever the mechanisms:

    setup()                 once per run start (e.g. CKKS key distribution)
    stop_reason(r, n)       before a round: set when a stage's budget would be exceeded
    begin_round(r, ...)     each stage prepares (key exchanges, then parameters), outermost first
    receive_hidden(update)  / receive_plain(update): the stage that takes updates, else the strategy
    finish_round(r, ...)    the stages unwrap the round's sum, innermost last, into the mean the strategy gets

This module never asks which mechanism is on: it orders the registered stages (:mod:`mpctf.privacy.stages`),
carries their exchanges through the backend (bytes and seconds counted into the round), weights the updates and
turns a sum into a mean when no stage does. When a stage takes the updates, the strategy sees one update per
round, which is why only strategies that aggregate by a mean are allowed (:mod:`mpctf.privacy.compat`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mpctf.aggregation import Strategy
from mpctf.config import RunConfig
from mpctf.data.chunking import PartyPlan
from mpctf.errors import FederationError
from mpctf.messages import NamedTensors, Update
from mpctf.privacy.accountant import sampling_rate
from mpctf.privacy.stages import STAGES, PrivacyStage, RoundState, RunInfo
from mpctf.runtime.base import Backend

_TAG = "server_privacy"
log = logging.getLogger("mpctf.server")


class ServerPrivacy:
    """The enabled privacy stages of one run, in order, and what a round of them collected."""

    def __init__(self, config: RunConfig, strategy: Strategy) -> None:
        from mpctf.comm import CODECS

        self.config = config
        self.strategy = strategy
        fed = config.federation
        bits = [CODECS.get(s.name).integer_bits for s in config.communication.uplink]
        self.run = RunInfo(
            num_parties=len(config.parties),
            parties_per_round=fed.parties_per_round,
            min_parties=fed.min_parties,
            uplink_integer_bits=next((b for b in bits if b is not None), None),
        )
        enabled = [(name, getattr(config.privacy, name)) for name in STAGES]
        self.stages: list[PrivacyStage] = sorted(
            (STAGES.get(name)(params, self.run) for name, params in enabled if params is not None),
            key=lambda stage: stage.order,
        )
        self.hider = next((s for s in self.stages if s.traits.hides_updates), None)
        uniform = any(s.traits.uniform_weights for s in self.stages)
        self.weight_rule = "uniform" if uniform else getattr(strategy.params, "weight", "uniform")
        #: The planned rate (every configured party reachable); each round accounts the rate it really had.
        self.q = sampling_rate(fed.parties_per_round or len(config.parties), len(config.parties))
        self.round_q = self.q
        self._round: RoundState | None = None
        self._traffic = {"up": 0, "down": 0, "seconds": 0.0}
        self._consumed = False
        self.last_metrics: dict[str, Any] = {}

    @classmethod
    def create(cls, config: RunConfig, strategy: Strategy) -> ServerPrivacy | None:
        """The privacy stages of ``config``, or ``None`` when it enables none."""
        return cls(config, strategy) if any(getattr(config.privacy, n) is not None for n in STAGES) else None

    @property
    def hides_updates(self) -> bool:
        return self.hider is not None

    @property
    def secret_selection(self) -> bool:
        """Whether the round loop must draw its selection from the OS's CSPRNG (a stage's guarantee needs it)."""
        return any(s.secret_selection for s in self.stages)

    @property
    def mechanism(self) -> str:
        return " + ".join(s.traits.title for s in self.stages)

    def stage(self, name: str) -> PrivacyStage | None:
        """The enabled stage registered as ``name``."""
        return next((s for s in self.stages if s.registered_name == name), None)

    # --- run level -------------------------------------------------------------------------------
    def setup(self, backend: Backend) -> dict[str, Any]:
        """Once per run start: each stage's setup; returns what to log."""
        info: dict[str, Any] = {"mechanism": self.mechanism, "sampling_rate": self.q}
        if self.hider is not None:  # what the report's guarantee says the server sees
            info["hidden_by"] = self.hider.traits.title
        parties = backend.party_names()
        for stage in self.stages:
            before = dict(self._traffic)
            info |= stage.setup(self._exchanger(backend), parties)
            if self._traffic != before:
                info[f"{stage.registered_name}_setup_seconds"] = self._traffic["seconds"] - before["seconds"]
                info[f"{stage.registered_name}_setup_bytes"] = (
                    self._traffic["up"] + self._traffic["down"] - before["up"] - before["down"]
                )
        return info

    def _exchanger(self, backend: Backend) -> Any:
        """The :data:`~mpctf.privacy.stages.Exchange` stages use: sent through the backend, bytes and seconds
        counted; parties that fail have dropped and are left out of the answer."""

        def exchange(tasks: dict[str, bytes]) -> dict[str, bytes]:
            start = time.perf_counter()
            self._traffic["down"] += sum(len(t) for t in tasks.values())
            answered: dict[str, bytes] = {}
            if tasks:
                for reply in backend.train_round(tasks, self.config.federation.round_timeout_s):
                    if reply.payload is not None:
                        self._traffic["up"] += len(reply.payload)
                        answered[reply.party] = reply.payload
            self._traffic["seconds"] += time.perf_counter() - start
            return answered

        return exchange

    def round_sampling_rate(self, reachable: int) -> float:
        """``q`` of a round that samples among ``reachable`` parties."""
        per_round = self.config.federation.parties_per_round or reachable
        return sampling_rate(min(per_round, reachable), reachable) if reachable else 1.0

    def stop_reason(self, round_num: int, reachable: int | None = None) -> str | None:
        """Why round ``round_num`` must not run, or ``None``; ``reachable``: the parties it would sample from
        (``None``: as many as the last round had)."""
        q = self.round_sampling_rate(reachable) if reachable is not None else self.round_q
        return next((r for s in self.stages if (r := s.stop_reason(round_num, q)) is not None), None)

    @property
    def max_rounds(self) -> int | None:
        """Rounds the privacy budget allows at the planned rate (``None``: no budget)."""
        return next((s.max_rounds for s in self.stages if s.max_rounds is not None), None)

    # --- one round -------------------------------------------------------------------------------
    def begin_round(
        self,
        round_num: int,
        selected: list[str],
        plans: dict[str, PartyPlan],
        backend: Backend,
        *,
        reachable: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Per party of the round (those that finished the stages' exchanges), the ``privacy`` instructions.

        ``reachable``: how many parties the selection was drawn from (``None``: every configured party). The
        instructions carry every parameter a party applies: it follows the server's, not its own config's."""
        self.round_q = self.round_sampling_rate(len(self.config.parties) if reachable is None else reachable)
        self._traffic = {"up": 0, "down": 0, "seconds": 0.0}
        self._consumed = False
        state = self._round = RoundState(
            round=round_num, selected=list(selected), sampling_rate=self.round_q, drawn=list(selected)
        )
        state.hider = self.hider
        common: dict[str, Any] = {"weight": self.weight_rule}
        if self.weight_rule != "uniform" and self.hides_updates:
            # Parties send (w_k / W)·Δ_k so hidden values stay near the update's own scale; W is public.
            state.scratch["weight_total"] = sum(_planned_weight(plans[p], self.weight_rule) for p in selected)
            common["weight_total"] = state.scratch["weight_total"]
        exchange = self._exchanger(backend)
        for stage in reversed(self.stages):  # outermost first: key exchanges settle who is in the round
            stage.begin_round(state, exchange)
        return {p: {**common, **state.instructions, **state.per_party.get(p, {})} for p in state.selected}

    def receive_hidden(self, update: Update, reference: NamedTensors) -> int:
        """Keep a masked or encrypted update for the round's sum; returns its size as float32 in the clear."""
        state = self._require_round()
        assert self.hider is not None
        self.hider.receive(state, update, reference)
        self._count(update)
        return 4 * sum(t.numel() for t in reference.values())

    def receive_plain(self, update: Update) -> None:
        """An update in the clear: to the stage that takes it (central DP clips it again), else the strategy."""
        state = self._require_round()
        if any(stage.receive(state, update, update.tensors) for stage in reversed(self.stages)):
            self._consumed = True
            self._count(update)
        else:
            self._observe(update)
            self.strategy.accumulate(update)

    def _count(self, update: Update) -> None:
        state = self._require_round()
        self._observe(update)
        value = {"samples": update.num_samples, "tokens": update.num_tokens}.get(self.weight_rule, 1)
        state.weights[update.party] = float(value)
        state.scratch["samples"] = state.scratch.get("samples", 0) + update.num_samples
        state.scratch["tokens"] = state.scratch.get("tokens", 0) + update.num_tokens

    def _observe(self, update: Update) -> None:
        for stage in self.stages:
            stage.observe(self._require_round(), update)

    def _require_round(self) -> RoundState:
        if self._round is None:
            raise RuntimeError("privacy stage used outside a round")
        return self._round

    def finish_round(self, round_num: int, backend: Backend) -> None:
        """The stages turn the round's sum into its mean (innermost last) and the strategy gets it as one update;
        when no stage took the updates, the strategy already has them."""
        state = self._require_round()
        start, exchanged = time.perf_counter(), self._traffic["seconds"]
        if self.hides_updates or self._consumed:
            total: NamedTensors = {}
            exchange = self._exchanger(backend)
            for stage in reversed(self.stages):
                total = stage.finish(state, total, exchange)
            if not any(s.divides() for s in self.stages):
                total = {k: v.float() * self._factor(state) for k, v in total.items()}
            self.strategy.accumulate(
                Update(
                    party="(aggregate)",
                    round=round_num,
                    tensors=total,
                    num_samples=max(state.scratch.get("samples", 0), 1),
                    num_tokens=max(state.scratch.get("tokens", 0), 1),
                )
            )
        server_seconds = time.perf_counter() - start - (self._traffic["seconds"] - exchanged)
        for warning in state.warnings:
            log.warning("round %d: %s", round_num, warning)
        self.last_metrics = {
            **state.metrics,
            **({"privacy_warnings": state.warnings} if state.warnings else {}),
            "privacy_exchange_seconds": self._traffic["seconds"],
            "privacy_server_seconds": server_seconds,
            "privacy_exchange_bytes_up": self._traffic["up"],
            "privacy_exchange_bytes_down": self._traffic["down"],
        }
        self._round = None

    def _factor(self, state: RoundState) -> float:
        """What turns the round's sum into its mean: ``W / Σ w_k`` of the updates that reached it."""
        survivors = sum(state.weights.values())
        if survivors <= 0:
            raise FederationError("no update reached the round's hidden sum")
        return state.scratch.get("weight_total", 1.0) / survivors

    # --- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every stage's state (the DP ledger, the adaptive clip norm), to checkpoint with the round."""
        return {"type": _TAG, "stages": {s.registered_name: s.state_dict() for s in self.stages}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; a checkpoint without a ledger cannot resume a DP run (ε would restart)."""
        saved = _upgrade(state)
        for stage in self.stages:
            if stage.registered_name not in saved:
                if stage.state_dict().keys() == {"stage"}:
                    continue  # nothing to restore
                raise FederationError(
                    f"the checkpoint holds no privacy ledger for {stage.traits.title}; a run with it cannot "
                    "resume from it"
                )
            try:
                stage.load_state_dict(saved[stage.registered_name])
            except ValueError as exc:
                raise FederationError(f"cannot resume: {exc}") from None


def _upgrade(state: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The stages' states of a checkpoint, also of one written before privacy was a stage list."""
    if state is None or state.get("type") != _TAG:
        return {}
    if "stages" in state:
        return dict(state["stages"])
    if state.get("accountant") is None:
        return {}
    return {
        "client_dp": {
            "stage": "client_dp",
            "accountant": state["accountant"],
            "clip_norm": state["clip_norm"],
        }
    }


def _planned_weight(plan: PartyPlan, rule: str) -> float:
    """A party's expected aggregation weight this round, from its public plan (only a scale, never exact)."""
    if rule == "samples":
        return float(plan.chunk_samples)
    if rule == "tokens":
        if plan.chunk_tokens is not None:
            return float(plan.chunk_tokens)
        return plan.chunk_samples * plan.num_tokens / max(plan.num_samples, 1)
    return 1.0
