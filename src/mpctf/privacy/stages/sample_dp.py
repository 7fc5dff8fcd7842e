"""Sample-level DP-SGD (Opacus) as a privacy stage: it acts inside a party's local training.

The party half asks the party's local loop for per-example clipping and noise (its parameters come from the
party's own config: the guarantee protects the party's own rows, and the party reports its ε) and keeps Opacus's
accountant history across rounds. The server half reads the ε each party reports and records the largest.
"""

from __future__ import annotations

from typing import Any

from mpctf.messages import Update
from mpctf.privacy.config import SampleDpConfig
from mpctf.privacy.stages.base import STAGES, MechanismTraits, PartyStage, PrivacyStage, RoundState


class DpSgdPartyStage(PartyStage):
    def __init__(self, params: SampleDpConfig | None) -> None:
        self.params = params
        #: Opacus's accountant state and step count, carried across rounds (``party.private_trainer``).
        self.ledger: Any = None

    def local_dp(self) -> tuple[Any, Any] | None:
        return None if self.params is None else (self.params, self)


@STAGES.register("sample_dp")
class SampleDpStage(PrivacyStage):
    traits = MechanismTraits("sample-level DP-SGD")
    order = 0

    @classmethod
    def party_stage(cls, name: str, own: Any | None) -> PartyStage:
        return DpSgdPartyStage(own)

    def observe(self, state: RoundState, update: Update) -> None:
        if (epsilon := update.metrics.get("dp_sgd_epsilon")) is not None:
            state.metrics["dp_sgd_epsilon_max"] = max(epsilon, state.metrics.get("dp_sgd_epsilon_max", 0.0))
