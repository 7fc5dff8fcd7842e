"""The round loop, written once for every backend.

    describe ─▶ plan chunks ─▶ evaluate round 0 ─▶ for each round:
        select parties ─▶ send state + instructions ─▶ validate / accumulate each update as it arrives
        ─▶ finalize ─▶ evaluate ─▶ checkpoint ─▶ metrics

Everything algorithmic is delegated (strategy, chunk planner, evaluator); this module only orders the steps and
records what happened.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpctf.aggregation import STRATEGIES, PartySpec, Strategy
from mpctf.aggregation.dynamic import BANDWIDTH
from mpctf.aggregation.validate import validate_update
from mpctf.comm import chain_from_specs, fp32_bytes
from mpctf.comm.accounting import reply_limit
from mpctf.config import RunConfig, TrainingConfig, dump_config, resolve_spec
from mpctf.data.chunking import PartyDataStats, PartyPlan
from mpctf.data.federated import FederatedData
from mpctf.data.tasks import make_task
from mpctf.errors import ConfigError, FederationError, UpdateRejected
from mpctf.messages import NamedTensors, RoundTask, Update, unpack
from mpctf.model.bundle import ModelBundle
from mpctf.party.planning import make_plans
from mpctf.report.metrics import MetricsLog, Record, read_metrics
from mpctf.runtime.base import Backend, PartyReply
from mpctf.server.checkpoint import Checkpoint, load_latest, save_checkpoint
from mpctf.server.evaluate import Evaluator
from mpctf.server.merged_base import MergedBase
from mpctf.server.privacy import ServerPrivacy
from mpctf.server.validation import FederatedValidation

log = logging.getLogger("mpctf.server")


@dataclass
class RunResult:
    """What ``mpctf.run`` returns: the run directory and the per-round records."""

    run_dir: Path
    rounds: list[Record] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float | None:
        return self.rounds[-1].get("accuracy") if self.rounds else None

    @property
    def initial_accuracy(self) -> float | None:
        first = next((r for r in self.rounds if r["round"] == 0), None)
        return first.get("accuracy") if first else None


def select_parties(
    available: list[str], per_round: int | None, seed: int, round_num: int, *, secret: bool = False
) -> list[str]:
    """A uniform sample of ``per_round`` parties (all when ``None``), sorted.

    Seeded (reproducible from ``seed``) by default; ``secret`` draws it from the OS's CSPRNG instead, as client
    DP's amplification by sampling needs: a selection replayable from ``config.yaml`` is known to everyone.
    """
    if per_round is None or per_round >= len(available):
        return sorted(available)
    rng = secrets.SystemRandom() if secret else random.Random(f"select:{seed}:{round_num}")
    return sorted(rng.sample(sorted(available), per_round))


def max_reply_bytes(config: RunConfig, state: NamedTensors) -> int:
    """The largest reply accepted from a party that was sent ``state`` (an encrypted update is larger)."""
    he = config.privacy.homomorphic_encryption
    return reply_limit(sum(t.numel() for t in state.values()), he.max_bytes_per_value if he else 0)


def measure_bandwidth(update: Update, reply: PartyReply) -> None:
    """Set ``update.metrics["bandwidth_bps"]``: the bits of the task and the reply over the round trip less the
    party's own time (``party_seconds``). Only the server measures it: a value the party sent is dropped."""
    update.metrics.pop(BANDWIDTH, None)
    party_s = update.metrics.get("party_seconds")
    if party_s is None or reply.payload is None:
        return
    # The floor keeps an in-process reply (local backend, microseconds of link) finite.
    link_s = max(reply.seconds - float(party_s), 1e-3)
    update.metrics[BANDWIDTH] = 8 * (reply.sent_bytes + len(reply.payload)) / link_s


class RoundLoop:
    def __init__(
        self,
        config: RunConfig,
        backend: Backend,
        run_dir: Path,
        *,
        bundle: ModelBundle | None = None,
        listeners: list[Callable[[Record], None]] | None = None,
    ) -> None:
        self.config, self.backend, self.run_dir = config, backend, run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(run_dir / "metrics.jsonl", listeners)
        cls, params = resolve_spec(STRATEGIES, config.federation.strategy, "federation.strategy")
        self.strategy: Strategy = cls(params)
        try:
            self.strategy.configure_parties(
                {
                    p: PartySpec(lora_rank=t.lora.r, lora_alpha=t.lora.alpha)
                    for p, t in self._trainings().items()
                }
            )
        except ValueError as exc:
            raise ConfigError(f"federation.strategy: {exc}") from None
        lora = config.training.lora
        if self.strategy.folds_lora_scale and lora.alpha != lora.r:
            raise ConfigError(
                f"federation.strategy {self.strategy.registered_name} keeps the global adapter with the LoRA scale "
                f"folded into B, so the server's adapter needs training.lora.alpha = training.lora.r ({lora.r}), "
                f"not {lora.alpha:g}; parties keep their own scale with parties[].lora_alpha"
            )
        self.bundle = bundle if bundle is not None else ModelBundle.load(config)
        task = make_task(config, self.bundle.tokenizer)
        eval_examples = task.encode_all(FederatedData(config).eval_rows(), "evaluation data")
        self.evaluate = Evaluator(self.bundle, task, eval_examples, config.data.eval.batch_size)
        self.merged_base = MergedBase(self.bundle) if self.strategy.merges_into_base else None
        self.uplink = chain_from_specs(config.communication.uplink)
        self.downlink = chain_from_specs(config.communication.downlink)
        #: Downlink codec state per party (e.g. a top-k residual on what that party was sent).
        self.downlink_state: dict[str, dict[int, dict[str, Any]]] = {}
        self.cumulative = {"bytes_down": 0, "bytes_up": 0, "bytes_up_fp32": 0}
        #: Client DP, secure aggregation, CKKS (None when the config enables none of them).
        self.privacy = ServerPrivacy.create(config, self.strategy)
        #: Federated validation on the parties' held-out rows (``data.validation``), or None.
        self.validation = None
        if config.data.validation is not None:
            if self.merged_base is not None:
                raise ConfigError(
                    f"data.validation: strategy {self.strategy.registered_name} merges each round into the "
                    "parties' own base weights, so a party cannot score the server's global model"
                )
            self.validation = FederatedValidation(
                config.data.validation, task.selection_metric, task.higher_is_better
            )

    def _trainings(self) -> dict[str, TrainingConfig]:
        return {p: self.config.party_training(p) for p in self.config.party_names}

    # --- setup -----------------------------------------------------------------------------------
    def plan(self) -> dict[str, PartyPlan]:
        """Ask every party for its data volume, then plan each party's per-round chunk."""
        describe = RoundTask(round=0, state={}, instructions={"op": "describe"}).to_bytes()
        parties = self.backend.party_names()
        stats: dict[str, PartyDataStats] = {}
        memory: dict[str, dict[str, Any]] = {}
        for reply in self.backend.train_round(
            dict.fromkeys(parties, describe), self.config.federation.round_timeout_s
        ):
            if reply.payload is None:
                raise FederationError(f"party {reply.party!r} could not describe its data: {reply.error}")
            _, header = unpack(reply.payload)
            stats[reply.party] = PartyDataStats(
                num_samples=header["num_samples"], token_lengths=header["token_lengths"]
            )
            memory[reply.party] = header.get("memory", {})
        plans = make_plans(self.config, stats, memory)
        for plan in plans.values():
            self.log.write("plan", **dataclasses.asdict(plan))
        return plans

    # --- one round -------------------------------------------------------------------------------
    def scored(self, round_num: int) -> bool:
        """Whether the global model is scored after ``round_num``: every ``data.eval.every_rounds``-th round and
        the run's last, including a last round forced by the privacy budget (so the final model always is)."""
        if round_num % self.config.data.eval.every_rounds == 0 or round_num == self.config.federation.rounds:
            return True
        # Asked only when the schedule skips the round: it computes epsilon one round ahead.
        return self.privacy is not None and self.privacy.stop_reason(round_num + 1) is not None

    def reachable(self, plans: dict[str, PartyPlan]) -> list[str]:
        """The parties online now that can be sent work (one that was down at planning time is not planned).

        Asked once per round: on Flower it queries the SuperLink for nodes."""
        return [p for p in self.backend.party_names() if p in plans]

    def run_round(
        self, round_num: int, state: NamedTensors, plans: dict[str, PartyPlan], reachable: list[str]
    ) -> NamedTensors:
        fed = self.config.federation
        secret = self.privacy is not None and self.privacy.secret_selection
        selected = select_parties(
            reachable, fed.parties_per_round, self.config.seed, round_num, secret=secret
        )
        if len(selected) < fed.min_parties:
            raise FederationError(
                f"round {round_num}: only {len(selected)} parties reachable, federation.min_parties={fed.min_parties}"
            )
        self.strategy.begin_round(round_num, state)
        sent = {p: self.strategy.state_for_party(p, state) for p in selected}
        # ``scored``: the evaluation schedule, public; a party spends its audit's forward passes on these rounds.
        instructions = {
            "op": "train",
            "strategy": self.strategy.party_instructions(),
            "scored": self.scored(round_num),
        }
        payload = self.strategy.round_payload()
        private = {}
        if self.privacy is not None:  # secure aggregation's key exchanges may leave parties out of the round
            private = self.privacy.begin_round(
                round_num, selected, plans, self.backend, reachable=len(reachable)
            )
            selected = [p for p in selected if p in private]
        shared: dict[int, tuple[NamedTensors, dict[str, Any]]] = {}

        def encode(p: str) -> tuple[NamedTensors, dict[str, Any]]:
            if self.downlink.keeps_state:
                return self.downlink.encode(sent[p], self.downlink_state.setdefault(p, {}))
            # The same state through a chain without per-party state encodes alike: once for all its parties.
            if id(sent[p]) not in shared:
                shared[id(sent[p])] = self.downlink.encode(sent[p], {})
            return shared[id(sent[p])]

        def task(p: str) -> Callable[[], bytes]:
            # Serialized only when the backend sends it (see ``Task``): one full-model task at a time, not N.
            def build() -> bytes:
                encoded, header = encode(p)
                party_instructions = {
                    **instructions,
                    "plan": dataclasses.asdict(plans[p]),
                    "downlink": header,
                }
                if p in private:
                    party_instructions["privacy"] = private[p]
                return RoundTask(round_num, encoded, party_instructions, payload).to_bytes()

            return build

        accepted = 0
        for reply in self.backend.train_round({p: task(p) for p in selected}, fed.round_timeout_s):
            record = self._receive(round_num, reply, sent[reply.party])
            accepted += record["status"] == "ok"
            self.log.write("party_round", **record)
            del reply  # before the backend fetches the next: a reply may be a whole model
        if accepted < fed.min_parties:
            raise FederationError(
                f"round {round_num}: {accepted} of {len(selected)} updates accepted, federation.min_parties="
                f"{fed.min_parties}; the run can resume from round {round_num - 1}"
            )
        if self.privacy is not None:
            # the secure sum's extra exchanges are traffic of this round too
            self.privacy.finish_round(round_num, self.backend)
            self.cumulative["bytes_up"] += self.privacy.last_metrics["privacy_exchange_bytes_up"]
            self.cumulative["bytes_down"] += self.privacy.last_metrics["privacy_exchange_bytes_down"]
        return self.strategy.finalize()

    def _receive(self, round_num: int, reply: PartyReply, reference: NamedTensors) -> dict[str, Any]:
        record: dict[str, Any] = {"round": round_num, "party": reply.party, "seconds": reply.seconds}
        record["bytes_down"] = bytes_down = reply.sent_bytes
        record["bytes_up"] = len(reply.payload) if reply.payload is not None else 0
        self.cumulative["bytes_down"] += bytes_down
        self.cumulative["bytes_up"] += record["bytes_up"]
        if reply.payload is None:
            return {**record, "status": "failed", "reason": reply.error}
        try:
            if len(reply.payload) > (limit := max_reply_bytes(self.config, reference)):
                # Flower has already received it; refusing it here keeps it from being decoded and aggregated.
                raise UpdateRejected(
                    f"reply of {len(reply.payload)} bytes is larger than the limit of {limit}"
                )
            update = Update.from_bytes(reply.payload)
            if update.party != reply.party or update.round != round_num:
                raise UpdateRejected(f"reply claims party {update.party!r} round {update.round}")
            measure_bandwidth(update, reply)
            if self.privacy is not None and self.privacy.hides_updates:
                norm, fp32 = None, self.privacy.receive_hidden(update, reference)
            else:
                update.tensors = self.uplink.decode(update.tensors, update.header.get("uplink", {}))
                norm = validate_update(update, reference, max_norm=self.config.federation.max_update_norm)
                sink = self.privacy.receive_plain if self.privacy is not None else self.strategy.accumulate
                sink(update)
                fp32 = fp32_bytes(update.tensors)
        except (ValueError, UpdateRejected) as exc:
            log.warning("round %d: update of party %r rejected: %s", round_num, reply.party, exc)
            return {**record, "status": "rejected", "reason": str(exc)}
        self.cumulative["bytes_up_fp32"] += fp32
        return {
            **record,
            "bytes_up_fp32": fp32,
            "status": "ok",
            "samples": update.num_samples,
            "tokens": update.num_tokens,
            "update_norm": norm,
            **update.metrics,
        }

    def validate(self, round_num: int, state: NamedTensors, reachable: list[str]) -> dict[str, Any]:
        """Federated validation of the round's global state (nothing when it is off): the combined metrics and
        the best round so far, for the round's record; each party's report goes to the log."""
        if self.validation is None:
            return {}
        states = {p: self.strategy.state_for_party(p, state) for p in reachable}
        result = self.validation.ask(round_num, states, self.backend, self.config.federation.round_timeout_s)
        self.cumulative["bytes_down"] += result.bytes_down
        self.cumulative["bytes_up"] += result.bytes_up
        for report in result.reports:
            self.log.write("party_validation", round=round_num, **report)
        return {**result.metrics, **self.validation.summary()}

    # --- the run ---------------------------------------------------------------------------------
    def _restore_record(self, ckpt: Checkpoint) -> Record | None:
        """Carry the byte counters over from the checkpointed round; log that round (and return its record) if
        the server died after saving its checkpoint but before writing its record."""
        if ckpt.record is None:  # a checkpoint written before records were kept in it
            return None
        for key in self.cumulative:
            self.cumulative[key] = int(ckpt.record.get(f"cumulative_{key}", 0))
        logged = read_metrics(self.log.path) if self.log.path.is_file() else []
        if any(r["event"] == "round" and r.get("round") == ckpt.round for r in logged):
            return None
        return self.log.write("round", **ckpt.record, recovered_from_checkpoint=True)

    def run(self, *, resume: bool = False) -> RunResult:
        if resume and self.merged_base is not None:  # refused before anything in the run folder changes
            raise ConfigError(
                f"federation.strategy {self.strategy.registered_name} cannot resume a run: every party adds "
                "each round's global adapter into its own base weights, which a restarted party has lost"
            )
        (self.run_dir / "config.yaml").write_text(dump_config(self.config))
        result = RunResult(self.run_dir)
        ckpt = load_latest(self.run_dir) if resume else None
        self.log.write(
            "run_start",
            name=self.config.name,
            resumed_from=ckpt.round if ckpt else None,
            server_model_load_seconds=self.bundle.load_seconds,
            parties=self.backend.party_names(),
        )
        plans = self.plan()
        if self.privacy is not None:
            self.log.write("privacy", **self.privacy.setup(self.backend))
        if ckpt is None:
            state = self.bundle.mode.get_state(self.bundle.model)
            if self.config.data.eval.before_training:
                result.rounds.append(self.log.write("round", round=0, **self.evaluate(state)))
            start = 1
        else:
            state = ckpt.global_state
            self.strategy.load_state_dict(ckpt.strategy_state)
            if self.privacy is not None:
                self.privacy.load_state_dict(ckpt.privacy_state)
            start = ckpt.round + 1
            if self.validation is not None and self.log.path.is_file():
                self.validation.restore(read_metrics(self.log.path), up_to=ckpt.round)
            if (recovered := self._restore_record(ckpt)) is not None:
                result.rounds.append(recovered)  # as the Flower and worker launchers report it from the log
        stopped = None
        for round_num in range(start, self.config.federation.rounds + 1):
            reachable = self.reachable(plans)
            if self.privacy is not None and (stopped := self.privacy.stop_reason(round_num, len(reachable))):
                self.log.write("privacy_stop", round=round_num, reason=stopped)
                break
            began = time.perf_counter()
            state = self.run_round(round_num, state, plans, reachable)
            train_done = time.perf_counter()
            model_state = self.merged_base.absorb(state) if self.merged_base is not None else state
            scores = {}
            if self.scored(round_num):
                scores = self.evaluate(model_state) | self.validate(round_num, state, reachable)
            privacy_state = self.privacy.state_dict() if self.privacy is not None else None
            record = {
                "round": round_num,
                **scores,
                "seconds": time.perf_counter() - began,
                "train_phase_seconds": train_done - began,
                **{f"cumulative_{k}": v for k, v in self.cumulative.items()},
                **(self.privacy.last_metrics if self.privacy is not None else {}),
            }
            save_checkpoint(
                self.run_dir,
                Checkpoint(round_num, state, self.strategy.state_dict(), privacy_state, record),
                self.bundle,
                model_state=model_state,
                merged_into_base=self.merged_base.delta if self.merged_base is not None else None,
            )
            result.rounds.append(self.log.write("round", **record))
            if self.validation is not None and self.validation.exhausted:
                stopped = (
                    f"no better validation {self.validation.metric} for {self.validation.since_best} scored "
                    f"rounds (data.validation.patience); the best round is {self.validation.best_round}"
                )
                self.log.write("early_stop", round=round_num, reason=stopped)
                break
        self.log.write(
            "run_end",
            rounds=self.config.federation.rounds,
            final_accuracy=result.final_accuracy,
            **(self.validation.summary() if self.validation is not None else {}),
            **({"stop_reason": stopped} if stopped else {}),
        )
        self.backend.close()
        return result
