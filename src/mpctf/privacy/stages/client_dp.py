"""Client-level DP (DP-FedAvg, with optional adaptive clipping) as a privacy stage.

Party: clip the update to the round's ``C`` (from the task, not the party's config), the centred indicator
``b_k − ½`` when adaptive clipping is on, and in distributed mode the party's noise shares. Server: in central
mode clip every update again and add ``N(0, σ²C²)`` to the sum; divide by the ``m`` parties drawn; account the
round at the rate its selection had; move the clip norm. The formulas live in :mod:`mpctf.privacy.dp`,
:mod:`~mpctf.privacy.adaptive_clip` and :mod:`~mpctf.privacy.accountant`; this module only wires them.
"""

from __future__ import annotations

from typing import Any

import torch

from mpctf.messages import NamedTensors, Update
from mpctf.privacy import rounds
from mpctf.privacy.config import ClientDpConfig
from mpctf.privacy.stages.base import (
    STAGES,
    Exchange,
    MechanismTraits,
    PartyContext,
    PartyStage,
    PrivacyStage,
    RoundState,
    RunInfo,
)

_PLAIN_SUM = "client_dp.sum"
_INDICATORS = "client_dp.indicators"
_CLIPPED = "client_dp.server_clipped"


class ClientDpParty(PartyStage):
    def protect(self, tensors: NamedTensors, instructions: dict[str, Any], ctx: PartyContext) -> NamedTensors:
        from mpctf.privacy import adaptive_clip, dp

        clip_norm = float(instructions["clip_norm"])
        tensors, norm = dp.clip_update(tensors, clip_norm)
        if instructions.get("noise_std", 0.0) > 0:
            tensors = dp.add_gaussian_noise(tensors, instructions["noise_std"], dp.make_generator())
        if instructions.get("adaptive"):
            indicator = adaptive_clip.centred_indicator(norm, clip_norm)
            if not ctx.hidden:
                ctx.metrics["dp_unclipped"] = indicator  # the server sees the clipped update anyway
                return tensors
            # b_k − ½ rides in the hidden vector (the server learns only the noised Σ); in distributed mode the
            # party adds its share of the count noise, scaled to stay inside the hidden value range.
            if (count_std := instructions.get("count_noise_std", 0.0)) > 0:
                indicator += float(torch.randn((), generator=dp.make_generator())) * count_std
            tensors[rounds.UNCLIPPED] = torch.tensor([indicator * float(instructions["indicator_scale"])])
        return tensors


@STAGES.register("client_dp")
class ClientDpStage(PrivacyStage):
    """See the module docstring; the ledger is :class:`~mpctf.privacy.accountant.ClientDpAccountant`."""

    traits = MechanismTraits("client-level DP", uniform_weights=True)
    order = 10
    params: ClientDpConfig

    def __init__(self, params: ClientDpConfig, run: RunInfo) -> None:
        from mpctf.privacy.accountant import ClientDpAccountant, sampling_rate
        from mpctf.privacy.adaptive_clip import AdaptiveClipper
        from mpctf.privacy.dp import make_generator

        super().__init__(params, run)
        planned_q = sampling_rate(run.parties_per_round or run.num_parties, run.num_parties)
        self.accountant = ClientDpAccountant(
            noise_multiplier=params.noise_multiplier,
            sampling_rate=planned_q,
            delta=params.delta,
            method=params.accountant,
        )
        self.clipper = None
        self.update_noise = params.noise_multiplier
        if params.adaptive_clipping is not None:
            self.clipper = AdaptiveClipper(
                params.adaptive_clipping,
                initial_clip_norm=params.clip_norm,
                total_noise_multiplier=params.noise_multiplier,
            )
            self.update_noise = self.clipper.update_noise_multiplier
        self.clip_norm = params.clip_norm
        self.generator = make_generator()

    @classmethod
    def party_stage(cls, name: str, own: Any | None) -> PartyStage:
        return ClientDpParty()

    @property
    def secret_selection(self) -> bool:
        """Amplification by sampling holds only for a selection nobody can replay (not one seeded from the
        run's config), so a sampled selection is drawn from the OS's CSPRNG."""
        return self.run.parties_per_round is not None

    def setup(self, exchange: Exchange, parties: list[str]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "delta": self.params.delta,
            "noise_multiplier": self.params.noise_multiplier,
            "selection": "os_csprng" if self.secret_selection else "all_reachable",
        }
        if self.params.epsilon_max is not None:
            self.max_rounds = self.accountant.max_steps_within(self.params.epsilon_max)
            info |= {"epsilon_max": self.params.epsilon_max, "max_rounds_within_budget": self.max_rounds}
        return info

    def stop_reason(self, round_num: int, sampling_rate: float) -> str | None:
        if self.params.epsilon_max is None:
            return None
        after = self.accountant.epsilon_with_round(sampling_rate)
        if after <= self.params.epsilon_max:
            return None
        return (
            f"privacy budget: round {round_num} would raise epsilon from {self.accountant.epsilon():.4g} to "
            f"{after:.4g}, above epsilon_max {self.params.epsilon_max:g} (delta {self.params.delta:g})"
        )

    def begin_round(self, state: RoundState, exchange: Exchange) -> None:
        from mpctf.privacy.dp import distributed_noise_std

        mine: dict[str, Any] = {"clip_norm": self.clip_norm, "adaptive": self.clipper is not None}
        share = 0.0
        if self.params.mode == "distributed" and state.hider is not None:
            least = state.hider.least_summed(len(state.selected))
            mine["noise_std"] = distributed_noise_std(self.update_noise, self.clip_norm, least)
            if self.clipper is not None:  # the count's noise is shared out like the update's
                share = mine["count_noise_std"] = self.clipper.params.count_noise_std / least**0.5
        if self.clipper is not None and state.hider is not None:
            # Clamping the noised indicator would cut the tails of the noise the ledger counts on.
            limit = state.hider.value_range()
            state.scratch["indicator_scale"] = mine["indicator_scale"] = (
                1.0 if limit is None else min(1.0, limit / (0.5 + 8 * share))
            )
            state.extra_coordinates[rounds.UNCLIPPED] = (1,)
        state.instructions[self.registered_name] = mine

    def receive(self, state: RoundState, update: Update, reference: NamedTensors) -> bool:
        """Central mode: the server clips every update again instead of trusting the party to have clipped."""
        from mpctf.aggregation.base import weighted_sum_into
        from mpctf.privacy.adaptive_clip import bounded_indicator
        from mpctf.privacy.dp import clip_update

        if state.hider is not None:
            return False
        clipped, norm = clip_update(update.tensors, self.clip_norm)
        if norm > self.clip_norm * (1 + 1e-5):  # float rounding of an honest party's clip is not a breach
            state.scratch.setdefault(_CLIPPED, []).append(update.party)
        state.scratch[_PLAIN_SUM] = weighted_sum_into(state.scratch.get(_PLAIN_SUM), clipped, 1.0)
        if self.clipper is not None:
            indicator = bounded_indicator(update.metrics.get("dp_unclipped", -0.5))
            state.scratch[_INDICATORS] = state.scratch.get(_INDICATORS, 0.0) + indicator
        return True

    def divides(self) -> bool:
        return True

    def finish(self, state: RoundState, total: NamedTensors, exchange: Exchange) -> NamedTensors:
        """``(Σ Δ̂_k [+ N(0, σ²C²) in central mode]) / m``, then the ledger and the next clip norm."""
        from mpctf.aggregation.base import sum_as_float32
        from mpctf.privacy.dp import noised_mean

        if state.hider is None:
            total = sum_as_float32(state.scratch[_PLAIN_SUM])
            indicators = state.scratch.get(_INDICATORS, 0.0)
        else:
            hidden = total.pop(rounds.UNCLIPPED, None)
            indicators = 0.0 if hidden is None else float(hidden.sum()) / state.scratch["indicator_scale"]
        m = len(state.drawn)
        if self.params.mode == "central":
            mean = noised_mean(
                total,
                noise_multiplier=self.update_noise,
                clip_norm=self.clip_norm,
                denominator=m,
                generator=self.generator,
            )
        else:  # the parties' shares are in the sum already
            mean = {k: v.float() / m for k, v in total.items()}
        state.metrics |= self._account(state, indicators)
        return mean

    def _account(self, state: RoundState, indicators: float) -> dict[str, Any]:
        q = state.sampling_rate
        clip_used = self.clip_norm
        self.accountant.step(sampling_rate=q)
        if self.clipper is not None:
            # In distributed mode the parties noised the count before it was summed.
            generator = self.generator if self.params.mode == "central" else None
            self.clip_norm = self.clipper.update(indicators, len(state.drawn), generator)
        return {
            "dp_epsilon": self.accountant.epsilon(),
            "dp_epsilon_known_selection": self.accountant.epsilon_without_sampling(),
            "dp_delta": self.params.delta,
            "dp_rounds": self.accountant.steps,
            "dp_sampling_rate": q,
            "dp_selection": "os_csprng" if self.secret_selection else "all_reachable",
            "dp_noise_multiplier": self.params.noise_multiplier,
            "dp_clip_norm": clip_used,
            **({"dp_next_clip_norm": self.clip_norm} if self.clipper is not None else {}),
            **({"dp_server_clipped": state.scratch[_CLIPPED]} if _CLIPPED in state.scratch else {}),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "accountant": self.accountant.state_dict(),
            "clip_norm": self.clip_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.accountant.load_state_dict(state["accountant"])
        self.clip_norm = float(state["clip_norm"])
        if self.clipper is not None:
            self.clipper.clip_norm = self.clip_norm
