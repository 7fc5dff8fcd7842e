"""The privacy stages: one module per mechanism, each registered in :data:`STAGES` under its ``privacy:`` key."""

from mpctf.privacy.stages import (  # noqa: F401  (registration side effect)
    audit,
    client_dp,
    homomorphic_encryption,
    sample_dp,
    secure_aggregation,
)
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

__all__ = [
    "STAGES",
    "Exchange",
    "MechanismTraits",
    "PartyContext",
    "PartyStage",
    "PrivacyStage",
    "RoundState",
    "RunInfo",
]
