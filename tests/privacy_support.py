"""A federation of hand-made updates around the server's and parties' privacy stages (no model): what the round
loop does around them, in milliseconds. Shared by the privacy-stage tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mpctf.aggregation.fedavg import FedAvg
from mpctf.config import load_config
from mpctf.data.chunking import PartyPlan
from mpctf.messages import RoundTask, Update
from mpctf.party.privacy import PartyPrivacy
from mpctf.privacy.config import PrivacyConfig
from mpctf.runtime.local import LocalBackend
from mpctf.server.privacy import ServerPrivacy
from support import tiny_config_dict

NAMES = ["alice", "bob", "carol"]
SAMPLES = {"alice": 10, "bob": 30, "carol": 20}


def deltas(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        p: {"w": torch.randn(3, 4, generator=g) * 0.01, "b": torch.randn(5, generator=g) * 0.01}
        for p in NAMES
    }


def plan(party: str) -> PartyPlan:
    return PartyPlan(party, 100, 1000, SAMPLES[party], None, 5, 4, 1, None, None)


class Federation:
    """Three parties answering privacy exchanges and training tasks (their 'training' returns a fixed delta)."""

    def __init__(
        self,
        tmp_path: Path,
        privacy: dict[str, Any],
        *,
        crash: set[str] = frozenset(),
        party_privacy: dict[str, Any] | None = None,
        federation: dict[str, Any] | None = None,
        scale: float = 1.0,
        communication: dict[str, Any] | None = None,
        updates: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """``party_privacy``: the parties' own ``privacy:`` section when it differs from the server's;
        ``scale`` multiplies every party's delta; ``updates`` replaces the parties' deltas."""
        overrides: dict[str, Any] = {"parties": [{"name": n} for n in NAMES], "privacy": privacy}
        if federation is not None:
            overrides["federation"] = {"rounds": 2, "strategy": {"name": "fedavg"}, **federation}
        if communication is not None:
            overrides["communication"] = communication
        self.config = load_config(tiny_config_dict(tmp_path, **overrides))
        own = self.config.privacy if party_privacy is None else PrivacyConfig.model_validate(party_privacy)
        self.parties = {p: PartyPrivacy(own, p) for p in NAMES}
        made = deltas() if updates is None else updates
        self.deltas = {p: {k: v * scale for k, v in d.items()} for p, d in made.items()}
        self.crash = crash
        self.seen_by_server: list[dict[str, torch.Tensor]] = []
        self.backend = LocalBackend({p: self._handler(p) for p in NAMES})

    def _handler(self, party: str):
        def handle(payload: bytes) -> bytes:
            task = RoundTask.from_bytes(payload)
            op = task.instructions["op"]
            if op in self.parties[party].ops:
                return self.parties[party].handle(task)
            if party in self.crash:
                raise RuntimeError("crashed while training")
            tensors, header, metrics = self.parties[party].protect(
                task, self.deltas[party], num_samples=SAMPLES[party], num_tokens=7 * SAMPLES[party]
            )
            update = Update(party, task.round, tensors, SAMPLES[party], 7 * SAMPLES[party], metrics)
            update.header = {"privacy": header}
            return update.to_bytes()

        return handle

    def round(
        self,
        server: ServerPrivacy,
        round_num: int = 1,
        *,
        selected: list[str] = NAMES,
        reachable: int | None = None,
    ) -> dict[str, torch.Tensor]:
        state = {k: torch.zeros_like(v) for k, v in self.deltas[NAMES[0]].items()}
        server.strategy.begin_round(round_num, state)
        plans = {p: plan(p) for p in NAMES}
        instructions = server.begin_round(round_num, selected, plans, self.backend, reachable=reachable)
        tasks = {
            p: RoundTask(round_num, {}, {"op": "train", "privacy": instructions[p]}).to_bytes()
            for p in instructions
        }
        for reply in self.backend.train_round(tasks, 60):
            if reply.payload is None:
                continue
            update = Update.from_bytes(reply.payload)
            self.seen_by_server.append(update.tensors)
            if server.hides_updates:
                server.receive_hidden(update, state)
            else:
                server.receive_plain(update)
        server.finish_round(round_num, self.backend)
        return server.strategy.finalize()


def weighted_mean(updates: dict[str, dict[str, torch.Tensor]], parties: list[str]) -> dict[str, torch.Tensor]:
    total = sum(SAMPLES[p] for p in parties)
    return {k: sum(updates[p][k] * SAMPLES[p] for p in parties) / total for k in ("w", "b")}


def server_for(fed: Federation) -> ServerPrivacy:
    server = ServerPrivacy.create(fed.config, FedAvg())
    assert server is not None
    server.setup(fed.backend)
    return server
