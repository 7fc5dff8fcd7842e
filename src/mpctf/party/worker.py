"""A party's long-lived worker: loads the model and its own data once, then serves the server's requests.

Two requests exist. ``describe`` (once, before round 1) returns the party's data volume so the server can plan
every party's per-round chunk; ``train`` loads the global state, trains on this round's chunk and returns
``local − global``. The same class serves the in-process ``local`` backend and the Flower party process.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from mpctf.aggregation import STRATEGIES
from mpctf.comm import chain_from_specs
from mpctf.config import RunConfig, load_config, resolve_spec
from mpctf.data.chunking import PartyPlan, chunk_indices
from mpctf.data.federated import FederatedData
from mpctf.data.tasks import make_task
from mpctf.messages import RoundTask, Update, pack
from mpctf.model.bundle import ModelBundle
from mpctf.party.attack import poison_update
from mpctf.party.canaries import CanaryRows
from mpctf.party.distributed import PartyRanks
from mpctf.party.planning import memory_report, party_stats
from mpctf.party.privacy import PartyPrivacy, hides_update
from mpctf.party.trainer import OptimizerMemory, TrainSettings, TrainStats, train_round
from mpctf.runtime.base import PartyHandler


class PartyWorker:
    def __init__(
        self, config: RunConfig, party: str, *, bundle: ModelBundle | None = None, threads: int | None = None
    ):
        if threads is not None:
            torch.set_num_threads(threads)
        self.config = config
        self.party = party
        self.training = config.party_training(party)
        self.bundle = bundle if bundle is not None else ModelBundle.load(config, self.training)
        self.task = make_task(config, self.bundle.tokenizer)
        train_rows, validation_rows = FederatedData(config).party_split(party)
        self.examples = self.task.encode_all(train_rows, f"party {party!r} data")
        #: The held-out slice of the party's own rows that federated validation scores (``data.validation``).
        self.validation = (
            self.task.encode_all(validation_rows, f"party {party!r} validation data")
            if validation_rows
            else []
        )
        self.strategy_cls, _ = resolve_spec(STRATEGIES, config.federation.strategy, "federation.strategy")
        self.uplink = chain_from_specs(config.communication.uplink)
        self.downlink = chain_from_specs(config.communication.downlink)
        #: The uplink codecs' state across rounds (e.g. the top-k error-feedback residual).
        self.uplink_state: dict[int, dict[str, Any]] = {}
        #: Algorithm state that persists across rounds at this party (e.g. SCAFFOLD's control variate).
        self.party_state: dict[str, Any] = {}
        #: The local optimizer's state between rounds (``training.optimizer_state: keep``).
        self.optimizer_memory = OptimizerMemory() if self.training.optimizer_state == "keep" else None
        self._reported_load = False
        #: Clip/noise, masking or encryption of the update, and the keys this party holds for them.
        self.privacy = PartyPrivacy(config.privacy, party)
        #: The one-run audit of this party's DP-SGD, when ``privacy.audit.canary_rows`` asks for it.
        self.canaries = self._canaries()
        world = config.party_processes(party)
        #: The party's other training processes, when it has several (this process is rank 0).
        self.ranks = PartyRanks(config, party, world, self.bundle) if world > 1 else None

    def _canaries(self) -> CanaryRows | None:
        audit = self.config.privacy.audit
        if audit is None or not audit.canary_rows or self.privacy.local_dp() is None:
            return None
        canaries = CanaryRows(self.task, self.examples, audit)
        self.examples = self.examples + canaries.trained()
        return canaries

    def close(self) -> None:
        """Stop the party's other training processes, if any."""
        if self.ranks is not None:
            self.ranks.close()

    def handle(self, payload: bytes) -> bytes:
        """Serve one serialized request; the reply is serialized the same way."""
        task = RoundTask.from_bytes(payload)
        if task.instructions.get("op") == "describe":
            return self.describe()
        if task.instructions.get("op") == "validate":
            return self.validate(task)
        if task.instructions.get("op") in self.privacy.ops:
            return self.privacy.handle(task)
        return self.train(task).to_bytes()

    def describe(self) -> bytes:
        stats = party_stats(self.examples)
        memory = memory_report(
            self.bundle, self.training, self.examples, self.config.party(self.party).memory_gb
        )
        return pack(
            {}, {"kind": "describe", "party": self.party, **dataclasses.asdict(stats), "memory": memory}
        )

    def validate(self, task: RoundTask) -> bytes:
        """Score the state the server sent on this party's validation slice; only the metrics leave."""
        if not self.validation:
            raise ValueError(f"party {self.party!r} holds no validation rows (data.validation is not set)")
        bundle = self.bundle
        bundle.mode.set_state(bundle.model, task.state)
        batch_size = self.config.data.validation.batch_size  # type: ignore[union-attr]
        metrics = self.task.evaluate(
            bundle.model, self.validation, batch_size=batch_size, device=bundle.device
        )
        return pack(
            {},
            {
                "kind": "validation",
                "party": self.party,
                "round": task.round,
                "num_samples": len(self.validation),
                "metrics": metrics,
            },
        )

    def train(self, task: RoundTask) -> Update:
        began = time.perf_counter()
        plan = PartyPlan(**task.instructions["plan"])
        lengths = [len(e.input_ids) for e in self.examples]
        chosen = chunk_indices(plan, lengths, task.round, self.config.seed)
        chunk = [self.examples[i] for i in chosen]
        bundle = self.bundle
        received = self.downlink.decode(task.state, task.instructions["downlink"])
        hooks = self.strategy_cls.party_hooks(
            task.instructions.get("strategy", {}), task.extra, self.party, received, self.party_state
        )
        bundle.mode.merge_into_base(bundle.model, hooks.merge_into_base())
        train = self.training
        settings = TrainSettings(
            lr=train.lr,
            weight_decay=train.weight_decay,
            optimizer=train.optimizer,
            momentum=train.momentum,
            micro_batch=plan.micro_batch,
            grad_accum=plan.grad_accum,
            max_steps=train.local_steps,
            seed=self.config.seed * 100_003 + task.round,
        )
        if self.ranks is None:
            bundle.mode.set_state(bundle.model, received)
            audit_batch = self.config.data.eval.batch_size
            if self.canaries is not None:
                self.canaries.before_training(bundle.model, bundle.device, audit_batch)
            stats, private_metrics = self._train(chunk, settings, hooks)
            if self.canaries is not None and task.instructions.get("scored", True):
                delta_dp = self.config.privacy.sample_dp.delta  # type: ignore[union-attr]  (canaries need it)
                private_metrics |= self.canaries.audit(bundle.model, bundle.device, audit_batch, delta_dp)
            local = bundle.mode.get_state(bundle.model)
        else:  # DP-SGD with several processes is refused at validation
            with self.ranks.round(
                received, {"chosen": chosen, "settings": settings, "hooks": hooks}
            ) as shard:
                stats = train_round(
                    bundle, self.task, chunk, settings, hooks, shard=shard, memory=self.optimizer_memory
                )
                gathered = shard.gather_state(bundle)
            assert gathered is not None  # rank 0 holds the whole state
            local, private_metrics = gathered, {}
        delta = {k: local[k].float() - received[k].float() for k in received}
        attack = self.config.party(self.party).attack
        if attack is not None:  # simulation only: see mpctf.party.attack
            delta = poison_update(delta, kind=attack.kind, factor=attack.factor)
        stage_header: dict[str, Any] = {}
        if "privacy" in task.instructions:  # the server's instructions, whatever this party's config says
            delta, privacy_header, privacy_metrics = self.privacy.protect(
                task, delta, num_samples=stats.samples, num_tokens=stats.tokens
            )
            private_metrics |= privacy_metrics
            stage_header["privacy"] = privacy_header
        if not hides_update(task):  # a masked or encrypted vector is sent as it is
            delta, stage_header["uplink"] = self.uplink.encode(delta, self.uplink_state)
        metrics = {
            "loss": stats.loss,
            "train_seconds": stats.seconds,
            "steps": float(stats.steps),
            "chunk_samples": float(len(chunk)),
            **private_metrics,
        }
        if not self._reported_load:
            metrics["model_load_seconds"] = bundle.load_seconds
            self._reported_load = True
        extra = hooks.after_training(local, received, stats.steps, train.lr)
        # What the server subtracts from its round trip to measure this party's link (dynamic weighting).
        metrics["party_seconds"] = time.perf_counter() - began
        return Update(
            party=self.party,
            round=task.round,
            tensors=delta,
            num_samples=stats.samples,
            num_tokens=stats.tokens,
            metrics=metrics,
            extra=extra,
            header=stage_header,
        )

    def _train(
        self, chunk: list[Any], settings: TrainSettings, hooks: Any
    ) -> tuple[TrainStats, dict[str, float]]:
        """The local round: plain, or with the per-example DP a privacy stage asks for (then the party's ε goes
        into the metrics)."""
        if self.bundle.mode.forward_only:
            from mpctf.party.blackbox import train_round_blackbox

            section = self.training.blackbox_prompt
            return train_round_blackbox(self.bundle, self.task, chunk, settings, section), {}
        local_dp = self.privacy.local_dp()
        if local_dp is None:
            return train_round(
                self.bundle, self.task, chunk, settings, hooks, memory=self.optimizer_memory
            ), {}
        from mpctf.party.private_trainer import DpSgdLedger, train_round_private

        params, keeper = local_dp
        if keeper.ledger is None:
            keeper.ledger = DpSgdLedger()
        stats, epsilon = train_round_private(
            self.bundle, self.task, chunk, settings, hooks, params, keeper.ledger, self.optimizer_memory
        )
        return stats, {"dp_sgd_epsilon": epsilon, "dp_sgd_steps": float(keeper.ledger.steps)}


def make_handler(config: str, party: str, threads: str | None = None) -> PartyHandler:
    """Factory for a party process: load everything once, return the request handler."""
    # Only this party's files need to exist here: the others' live on their own hosts.
    return PartyWorker(
        load_config(config, party=party), party, threads=int(threads) if threads else None
    ).handle
