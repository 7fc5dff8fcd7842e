"""The server's side of the round's privacy stages: the DP ledger, and aggregation it cannot read one update of.

The round loop calls, when ``privacy:`` enables client DP, secure aggregation or CKKS:

    setup()                 once per run start: CKKS key distribution (parties seal the secret context)
    stop_reason(r)          before a round: set when the round would take ε above ``epsilon_max``
    begin_round(r, ...)     SecAgg exchanges 1–2; the per-party instructions (clip norm, noise share, weights)
    receive_hidden(update)  / receive_plain(update): instead of ``strategy.accumulate``
    finish_round(r, ...)    SecAgg unmask / CKKS decrypt at a party; central noise; accountant; adaptive clip;
                            then ``strategy.accumulate`` of one update holding the round's (noised) mean

The strategy thus sees one aggregated update per round (the server never holds an individual hidden update),
which is why only strategies that depend on the mean update are allowed (``privacy.compat``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from mpctf.aggregation import Strategy
from mpctf.aggregation.base import sum_as_float32, weighted_sum_into
from mpctf.config import RunConfig
from mpctf.data.chunking import PartyPlan
from mpctf.errors import FederationError, UpdateRejected
from mpctf.messages import NamedTensors, Update, unpack
from mpctf.privacy import rounds
from mpctf.privacy.layout import TensorLayout
from mpctf.runtime.base import Backend, PartyReply

_TAG = "server_privacy"


@dataclass
class _Round:
    """What one round collected: hidden or clipped updates, weights and counts, and the protocol's cost."""

    selected: list[str]
    weight_total: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    tokens: int = 0
    plain_sum: NamedTensors | None = None
    unclipped: float = 0.0
    masked: list[dict[str, Any]] = field(default_factory=list)
    encrypted: list[Any] = field(default_factory=list)
    secagg: Any = None
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    server_seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)
    decrypted_by: str | None = None
    #: Parties whose update arrived above the clip norm and was clipped by the server.
    server_clipped: list[str] = field(default_factory=list)
    #: Factor the parties applied to the centred indicator inside the masked vector.
    indicator_scale: float = 1.0


class ServerPrivacy:
    """Client-level DP bookkeeping and hidden aggregation for one run (see the module docstring)."""

    def __init__(self, config: RunConfig, strategy: Strategy) -> None:
        from mpctf.privacy.accountant import ClientDpAccountant, sampling_rate
        from mpctf.privacy.adaptive_clip import AdaptiveClipper
        from mpctf.privacy.dp import make_generator

        self.config = config
        self.strategy = strategy
        privacy = config.privacy
        self.dp, self.secagg, self.he = (
            privacy.client_dp,
            privacy.secure_aggregation,
            privacy.homomorphic_encryption,
        )
        fed = config.federation
        #: The planned rate (every configured party reachable); each round accounts the rate it really had.
        self.q = sampling_rate(fed.parties_per_round or len(config.parties), len(config.parties))
        self.round_q = self.q
        self.accountant = None
        self.clipper = None
        self.clip_norm = self.dp.clip_norm if self.dp else 0.0
        self.update_noise = self.dp.noise_multiplier if self.dp else 0.0
        if self.dp is not None:
            self.accountant = ClientDpAccountant(
                noise_multiplier=self.dp.noise_multiplier,
                sampling_rate=self.q,
                delta=self.dp.delta,
                method=self.dp.accountant,
            )
            if self.dp.adaptive_clipping is not None:
                self.clipper = AdaptiveClipper(
                    self.dp.adaptive_clipping,
                    initial_clip_norm=self.dp.clip_norm,
                    total_noise_multiplier=self.dp.noise_multiplier,
                )
                self.update_noise = self.clipper.update_noise_multiplier
        self.max_rounds: int | None = None
        self.generator = make_generator()
        self.weight_rule = "uniform" if self.dp else getattr(strategy.params, "weight", "uniform")
        self._public_context: bytes | None = None
        self._round: _Round | None = None
        self.last_metrics: dict[str, Any] = {}

    @classmethod
    def create(cls, config: RunConfig, strategy: Strategy) -> ServerPrivacy | None:
        """The privacy stages of ``config``, or ``None`` when the round needs none (sample-level DP-SGD acts
        inside the parties only)."""
        p = config.privacy
        if p.client_dp is None and p.secure_aggregation is None and p.homomorphic_encryption is None:
            return None
        return cls(config, strategy)

    @property
    def hides_updates(self) -> bool:
        return self.secagg is not None or self.he is not None

    @property
    def mechanism(self) -> str:
        parts = []
        if self.dp is not None:
            parts.append(f"client DP ({self.dp.mode}{', adaptive clipping' if self.clipper else ''})")
        if self.secagg is not None:
            parts.append("secure aggregation" + (" (SecAgg+)" if self.secagg.num_neighbours else ""))
        if self.he is not None:
            parts.append("CKKS homomorphic encryption")
        return " + ".join(parts)

    # --- run level -------------------------------------------------------------------------------
    def setup(self, backend: Backend) -> dict[str, Any]:
        """Once per run start: the epsilon budget in rounds, and CKKS key distribution; returns what to log."""
        info: dict[str, Any] = {"mechanism": self.mechanism, "sampling_rate": self.q}
        if self.dp is not None:
            info["selection"] = "os_csprng" if self.secret_selection else "all_reachable"
        if self.accountant is not None and self.dp is not None:
            info |= {"delta": self.dp.delta, "noise_multiplier": self.dp.noise_multiplier}
            if self.dp.epsilon_max is not None:
                self.max_rounds = self.accountant.max_steps_within(self.dp.epsilon_max)
                info |= {"epsilon_max": self.dp.epsilon_max, "max_rounds_within_budget": self.max_rounds}
        if self.he is not None:
            info |= self._distribute_ckks_keys(backend)
        return info

    def _distribute_ckks_keys(self, backend: Backend) -> dict[str, Any]:
        start, traffic = time.perf_counter(), [0, 0]  # [up, down]
        parties = backend.party_names()
        keys = self._exchange(backend, {p: rounds.request(rounds.HE_KEY, 0) for p in parties}, traffic)
        publics = {p: rounds.read_reply(r.payload, rounds.HE_KEY)[0]["public"] for p, r in keys.items()}
        if not publics:
            raise FederationError("no party answered the CKKS key exchange")
        holder = min(publics)
        reply = self._exchange(backend, {holder: rounds.request(rounds.HE_CONTEXT, 0, publics)}, traffic)
        if holder not in reply:
            raise FederationError(f"party {holder!r} could not create the CKKS context")
        blobs, _ = rounds.read_reply(reply[holder].payload, rounds.HE_CONTEXT)
        self._public_context = blobs["public_context"]
        installs = {
            p: rounds.request(rounds.HE_INSTALL, 0, {"sealed": blobs[f"sealed/{p}"]})
            for p in publics
            if p != holder
        }
        installed = self._exchange(backend, installs, traffic)
        return {
            "he_key_holder": holder,
            "he_parties": sorted([holder, *installed]),
            "he_setup_seconds": time.perf_counter() - start,
            "he_setup_bytes": sum(traffic),
            "he_public_context_bytes": len(self._public_context),
        }

    def _exchange(
        self, backend: Backend, tasks: dict[str, bytes], traffic: list[int] | None = None
    ) -> dict[str, PartyReply]:
        """Send one exchange; the replies that arrived (failed parties are left out: they dropped).

        Bytes (``[up, down]``) and seconds count into ``traffic``, or into the round in flight."""
        start = time.perf_counter()
        up, down = 0, sum(len(t) for t in tasks.values())
        answered: dict[str, PartyReply] = {}
        if tasks:
            for reply in backend.train_round(tasks, self.config.federation.round_timeout_s):
                if reply.payload is not None:
                    up += len(reply.payload)
                    answered[reply.party] = reply
        if traffic is not None:
            traffic[0] += up
            traffic[1] += down
        elif self._round is not None:
            self._round.bytes_up += up
            self._round.bytes_down += down
            self._round.seconds += time.perf_counter() - start
        return answered

    @property
    def secret_selection(self) -> bool:
        """Whether the round loop must draw its selection from the OS's CSPRNG: the ledger's amplification by
        sampling holds only for a selection nobody can predict (a seeded one can be replayed from config.yaml)."""
        return self.dp is not None and self.config.federation.parties_per_round is not None

    def round_sampling_rate(self, reachable: int) -> float:
        """``q`` of a round that samples among ``reachable`` parties."""
        from mpctf.privacy.accountant import sampling_rate

        per_round = self.config.federation.parties_per_round or reachable
        return sampling_rate(min(per_round, reachable), reachable) if reachable else 1.0

    def stop_reason(self, round_num: int, reachable: int | None = None) -> str | None:
        """Why round ``round_num`` must not run (it would take ε above ``epsilon_max``), or ``None``.

        ``reachable``: the parties the round would sample from (``None``: as many as the last round had)."""
        if self.dp is None or self.dp.epsilon_max is None or self.accountant is None:
            return None
        q = self.round_sampling_rate(reachable) if reachable is not None else self.round_q
        after = self.accountant.epsilon_with_round(q)
        if after <= self.dp.epsilon_max:
            return None
        spent = self.accountant.epsilon()
        return (
            f"privacy budget: round {round_num} would raise epsilon from {spent:.4g} to {after:.4g}, above "
            f"epsilon_max {self.dp.epsilon_max:g} (delta {self.dp.delta:g})"
        )

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
        """Per party of the round (those that finished the key exchanges), the ``privacy`` instructions.

        ``reachable``: how many parties the selection was drawn from (its sampling rate is accounted); ``None``
        means every configured party. The instructions carry every parameter the party applies (clip norm,
        noise shares, how to hide the update): a party follows the server's, not its own config's."""
        from mpctf.privacy.dp import distributed_noise_std

        self._round = state = _Round(selected=list(selected))
        self.round_q = self.round_sampling_rate(len(self.config.parties) if reachable is None else reachable)
        base: dict[str, Any] = {"weight": self.weight_rule}
        if self.secagg is not None:
            base["hide"] = "secagg"
        elif self.he is not None:
            base["hide"] = "ckks"
        if self.weight_rule != "uniform" and self.hides_updates:
            # Parties send (w_k / W)·Δ_k so masked values stay near the update's own scale; W is public.
            state.weight_total = sum(_planned_weight(plans[p], self.weight_rule) for p in selected)
            base["weight_total"] = state.weight_total
        if self.dp is not None:
            base["clip_norm"] = self.clip_norm
            base["adaptive"] = self.clipper is not None
        inboxes: dict[str, str | None] = dict.fromkeys(selected)
        if self.secagg is not None:
            inboxes = self._secagg_keys(round_num, selected, backend)
        if self.dp is not None and self.dp.mode == "distributed":
            least = self._least_summed(len(inboxes))
            base["noise_std"] = distributed_noise_std(self.update_noise, self.clip_norm, least)
            if self.clipper is not None:  # the count's noise is shared out like the update's
                base["count_noise_std"] = self.clipper.params.count_noise_std / math.sqrt(least)
        if self.secagg is not None and self.clipper is not None:
            state.indicator_scale = self._indicator_scale(base.get("count_noise_std", 0.0))
            base["indicator_scale"] = state.indicator_scale
        return {p: {**base, **({"inbox": box} if box else {})} for p, box in inboxes.items()}

    def _least_summed(self, holders: int) -> int:
        """The fewest updates that can reach the sum: each party's share of the noise is planned for them.

        The SecAgg threshold (or min_parties), so a dropout never leaves the sum with less noise than σC."""
        least = self.config.federation.min_parties
        if self.secagg is not None:
            holders_per_secret = (
                holders if self.secagg.num_neighbours is None else self.secagg.num_neighbours + 1
            )
            least = max(least, 2, self.secagg.threshold_for(min(holders, holders_per_secret)))
        return least

    def _secagg_keys(self, round_num: int, selected: list[str], backend: Backend) -> dict[str, str | None]:
        """Exchanges 1 (advertise keys) and 2 (share keys); each party's inbox, base64, for its train task."""
        import base64

        from mpctf.privacy.secagg import SecAggServer, wire

        assert self.secagg is not None and self._round is not None
        params = self._ring(len(selected))
        self._round.secagg = server = SecAggServer(params, round_num)
        ring = params.model_dump()
        advertise = {p: rounds.request(rounds.SECAGG_ADVERTISE, round_num, secagg=ring) for p in selected}
        ads = self._exchange(backend, advertise)
        roster = wire.dumps(
            server.collect_keys([self._message(r, rounds.SECAGG_ADVERTISE) for r in ads.values()])
        )
        share = {p: rounds.request(rounds.SECAGG_SHARE, round_num, {"message": roster}) for p in ads}
        shares = self._exchange(backend, share)
        inboxes = server.route_shares([self._message(r, rounds.SECAGG_SHARE) for r in shares.values()])
        return {p: base64.b64encode(wire.dumps(box)).decode() for p, box in inboxes.items()}

    def _ring(self, num_parties: int) -> Any:
        """The round's SecAgg ring: as configured, or set by the uplink's integer quantiser (``privacy.compat``
        allows one, alone)."""
        from mpctf.comm import CODECS

        assert self.secagg is not None
        bits = [CODECS.get(s.name).integer_bits for s in self.config.communication.uplink]
        code_bits = next((b for b in bits if b is not None), None)
        return self.secagg if code_bits is None else self.secagg.for_integer_codes(code_bits, num_parties)

    @staticmethod
    def _message(reply: PartyReply, op: str) -> dict[str, Any]:
        from mpctf.privacy.secagg import wire

        assert reply.payload is not None
        return wire.loads(rounds.read_reply(reply.payload, op)[0]["message"])

    def receive_hidden(self, update: Update, reference: NamedTensors) -> int:
        """Keep a masked or encrypted update for the round's sum; returns its size as float32 in the clear."""
        state = self._require_round()
        who = f"party {update.party!r}"
        try:
            layout = TensorLayout.from_json(update.header["privacy"]["layout"])
        except (KeyError, TypeError, ValueError):
            raise UpdateRejected(f"{who}: hidden update without a readable layout") from None
        expected = {k: tuple(v.shape) for k, v in reference.items()}
        if self.clipper is not None and self.secagg is not None:
            expected[rounds.UNCLIPPED] = (1,)
        got = dict(zip(layout.names, layout.shapes, strict=True))
        if got != expected:
            wrong = sorted(set(got) ^ set(expected)) or [k for k in got if got[k] != expected[k]]
            raise UpdateRejected(f"{who}: hidden update's layout differs at {wrong[0]!r}")
        if self.secagg is not None:
            if (
                set(update.tensors) != {rounds.MASKED}
                or update.tensors[rounds.MASKED].numel() != layout.numel
            ):
                raise UpdateRejected(f"{who}: expected one masked vector of {layout.numel} values")
            masked = {"party": update.party, "round": update.round, "masked": update.tensors[rounds.MASKED]}
            state.masked.append({**masked, "layout": layout.to_json()})
        else:
            from mpctf.privacy.he import EncryptedUpdate

            assert self.he is not None
            if len(update.tensors) != -(-layout.numel // self.he.slots):
                raise UpdateRejected(f"{who}: {len(update.tensors)} ciphertexts do not fit its layout")
            state.encrypted.append(EncryptedUpdate(layout, rounds.ckks_chunks(update.tensors)))
        self._count(update)
        return 4 * layout.numel

    def receive_plain(self, update: Update) -> None:
        """Central client DP: clip one update again and fold it into the round's plain sum (uniform weights).

        The server enforces the bound its noise is calibrated to instead of trusting the party to have clipped
        (a party whose config lacks client DP, or a faulty one, would otherwise widen the sensitivity). The
        party's adaptive-clipping indicator is clamped to its bound for the same reason."""
        from mpctf.privacy.adaptive_clip import bounded_indicator
        from mpctf.privacy.dp import clip_update

        state = self._require_round()
        clipped, norm = clip_update(update.tensors, self.clip_norm)
        if norm > self.clip_norm * (1 + 1e-5):  # float rounding of an honest party's clip is not a breach
            state.server_clipped.append(update.party)
        state.plain_sum = weighted_sum_into(state.plain_sum, clipped, 1.0)
        if self.clipper is not None:
            state.unclipped += bounded_indicator(update.metrics.get("dp_unclipped", -0.5))
        self._count(update)

    def _count(self, update: Update) -> None:
        state = self._require_round()
        value = {"samples": update.num_samples, "tokens": update.num_tokens}.get(self.weight_rule, 1)
        state.weights[update.party] = float(value)
        state.samples += update.num_samples
        state.tokens += update.num_tokens

    def _require_round(self) -> _Round:
        if self._round is None:
            raise RuntimeError("privacy stage used outside a round")
        return self._round

    def finish_round(self, round_num: int, backend: Backend) -> None:
        """Recover the round's mean, noise it and account for it, and hand it to the strategy as one update."""
        state = self._require_round()
        start, exchanges_before = time.perf_counter(), state.seconds
        if self.secagg is not None:
            total = self._secagg_unmask(round_num, backend)
        elif self.he is not None:
            total = self._he_mean(round_num, backend)
        else:
            assert state.plain_sum is not None  # the loop finishes a round only after an accepted update
            total = sum_as_float32(state.plain_sum)
        mean = self._mean(total)
        metrics: dict[str, Any] = {}
        if self.accountant is not None:
            metrics |= self._account()
        state.server_seconds = time.perf_counter() - start - (state.seconds - exchanges_before)
        self.strategy.accumulate(
            Update(
                party="(aggregate)",
                round=round_num,
                tensors=mean,
                num_samples=max(state.samples, 1),
                num_tokens=max(state.tokens, 1),
            )
        )
        self.last_metrics = {**metrics, **self._overhead(state)}
        self._round = None

    def _mean(self, total: NamedTensors) -> NamedTensors:
        """Σ → the mean the strategy applies: DP divides by the m selected (public), others by Σ w_k."""
        from mpctf.privacy.dp import noised_mean

        state = self._require_round()
        if self.dp is not None and self.dp.mode == "central":
            return noised_mean(
                total,
                noise_multiplier=self.update_noise,
                clip_norm=self.clip_norm,
                denominator=len(state.selected),
                generator=self.generator,
            )
        if self.he is not None:
            return {k: v.float() for k, v in total.items()}  # decrypted already as the mean
        return {k: v.float() * self._factor() for k, v in total.items()}

    def _factor(self) -> float:
        """What turns the round's sum into its mean."""
        state = self._require_round()
        if self.dp is not None:
            return 1.0 / len(state.selected)
        survivors = sum(state.weights.values())
        if survivors <= 0:
            raise FederationError("no update reached the round's hidden sum")
        return (state.weight_total if self.weight_rule != "uniform" else 1.0) / survivors

    def _secagg_unmask(self, round_num: int, backend: Backend) -> NamedTensors:
        """Exchange 4: the survivors reveal shares; the server strips the masks and decodes the sum."""
        from mpctf.privacy.secagg import wire

        state = self._require_round()
        request = wire.dumps(state.secagg.collect_masked(state.masked))
        survivors = sorted(m["party"] for m in state.masked)
        tasks = {p: rounds.request(rounds.SECAGG_UNMASK, round_num, {"message": request}) for p in survivors}
        replies = self._exchange(backend, tasks)
        total = state.secagg.unmask([self._message(r, rounds.SECAGG_UNMASK) for r in replies.values()])
        state.dropped = sorted(set(state.selected) - set(survivors))
        unclipped = total.pop(rounds.UNCLIPPED, None)
        if unclipped is not None:
            state.unclipped = float(unclipped.sum()) / state.indicator_scale
        return total

    def _indicator_scale(self, count_noise_share: float) -> float:
        """Factor that keeps a (noised) centred indicator inside the fixed-point ``clip_range``: clamping it
        would cut the tails of the noise the ledger counts on (8 standard deviations of headroom)."""
        assert self.secagg is not None
        return min(1.0, self.secagg.clip_range / (0.5 + 8 * count_noise_share))

    def _he_mean(self, round_num: int, backend: Backend) -> NamedTensors:
        """Σ_k f·c_k in ciphertext (f turns the sum into the mean), decrypted by the first party that can."""
        from mpctf.privacy.he import aggregate_encrypted

        state = self._require_round()
        if self._public_context is None:
            raise FederationError("no CKKS public context: the key setup did not run")
        factor = self._factor()
        aggregate = aggregate_encrypted(
            self._public_context, state.encrypted, [factor] * len(state.encrypted)
        ).to_bytes()
        for party in sorted(state.weights):
            task = rounds.request(rounds.HE_DECRYPT, round_num, {"aggregate": aggregate})
            reply = self._exchange(backend, {party: task}).get(party)
            if reply is not None and reply.payload is not None:
                tensors, header = unpack(reply.payload)
                if header.get("op") == rounds.HE_DECRYPT:
                    state.decrypted_by = party
                    return tensors
        raise FederationError(f"round {round_num}: no party could decrypt the aggregate")

    def _account(self) -> dict[str, Any]:
        """One more release on the ledger; the adaptive clip norm for the next round."""
        assert self.accountant is not None and self.dp is not None
        state = self._require_round()
        clip_used = self.clip_norm
        self.accountant.step(sampling_rate=self.round_q)
        if self.clipper is not None:
            # In distributed mode the parties noised the count before it was summed.
            generator = self.generator if self.dp.mode == "central" else None
            self.clip_norm = self.clipper.update(state.unclipped, len(state.selected), generator)
        return {
            "dp_epsilon": self.accountant.epsilon(),
            "dp_epsilon_known_selection": self.accountant.epsilon_without_sampling(),
            "dp_delta": self.dp.delta,
            "dp_rounds": self.accountant.steps,
            "dp_sampling_rate": self.round_q,
            "dp_selection": "os_csprng" if self.secret_selection else "all_reachable",
            "dp_noise_multiplier": self.dp.noise_multiplier,
            "dp_clip_norm": clip_used,
            **({"dp_next_clip_norm": self.clip_norm} if self.clipper is not None else {}),
        }

    def _overhead(self, state: _Round) -> dict[str, Any]:
        out: dict[str, Any] = {
            "privacy_exchange_seconds": state.seconds,
            "privacy_server_seconds": state.server_seconds,
            "privacy_exchange_bytes_up": state.bytes_up,
            "privacy_exchange_bytes_down": state.bytes_down,
        }
        if state.dropped:
            out["privacy_dropped"] = state.dropped
        if state.decrypted_by:
            out["he_decrypted_by"] = state.decrypted_by
        if state.server_clipped:
            out["dp_server_clipped"] = state.server_clipped
        return out

    # --- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The ledger and the adaptive clip norm, to checkpoint with the round."""
        return {
            "type": _TAG,
            "accountant": self.accountant.state_dict() if self.accountant is not None else None,
            "clip_norm": self.clip_norm,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; a checkpoint without a ledger cannot resume a DP run (ε would restart)."""
        if state is None or state.get("type") != _TAG:
            if self.accountant is not None:
                raise FederationError(
                    "the checkpoint holds no privacy ledger; a DP run cannot resume from it"
                )
            return
        if self.accountant is not None:
            if state.get("accountant") is None:
                raise FederationError("the checkpoint was written without client DP; cannot resume with it")
            try:
                self.accountant.load_state_dict(state["accountant"])
            except ValueError as exc:
                raise FederationError(f"cannot resume: {exc}") from None
        self.clip_norm = float(state.get("clip_norm", self.clip_norm))
        if self.clipper is not None:
            self.clipper.clip_norm = self.clip_norm


def _planned_weight(plan: PartyPlan, rule: str) -> float:
    """A party's expected aggregation weight this round, from its public plan (only a scale, never exact)."""
    if rule == "samples":
        return float(plan.chunk_samples)
    if rule == "tokens":
        if plan.chunk_tokens is not None:
            return float(plan.chunk_tokens)
        return plan.chunk_samples * plan.num_tokens / max(plan.num_samples, 1)
    return 1.0
