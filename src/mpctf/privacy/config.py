"""The ``privacy:`` section of a run's configuration: which mechanisms are on, and their parameters.

Every section is optional; an absent section means the mechanism is off. Cross-mechanism checks (what cannot
be combined with what) live in :mod:`mpctf.privacy.compat`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mpctf.privacy.adaptive_clip import AdaptiveClipParams
from mpctf.privacy.ckks_params import CkksParams
from mpctf.privacy.secagg.params import SecAggParams


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientDpConfig(_Section):
    """Client-level DP-FedAvg: clip each update, add Gaussian noise to the sum, account ε over rounds."""

    noise_multiplier: float = Field(ge=0)
    #: L2 bound of a party's update (the starting value when ``adaptive_clipping`` is on).
    clip_norm: float = Field(gt=0)
    #: ``central``: the server noises the sum; ``distributed``: each party adds its share before masking.
    mode: Literal["central", "distributed"] = "central"
    delta: float = Field(1e-5, gt=0, lt=1)
    #: Stop training before the round that would take ε above this; ``None``: report ε, never stop.
    epsilon_max: float | None = Field(None, gt=0)
    accountant: Literal["rdp", "pld"] = "rdp"
    adaptive_clipping: AdaptiveClipParams | None = None


class SampleDpConfig(_Section):
    """Sample-level DP-SGD inside every party (Opacus)."""

    noise_multiplier: float = Field(ge=0)
    max_grad_norm: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    grad_sample_mode: Literal["hooks", "functorch", "ew"] = "hooks"


class AuditParams(_Section):
    """In-run empirical privacy auditing (``privacy.audit``): canary updates that check client DP's ledger, and
    canary rows that check sample-level DP-SGD's."""

    #: Canaries inserted (each takes part in a round with the round's sampling rate).
    canaries: int = Field(100, ge=2)
    #: Directions never inserted: the empirical null.
    unseen: int = Field(100, ge=2)
    #: Coordinates the statistic reads at most (a random subset of the trainable state when it has more).
    max_dim: int = Field(2**20, ge=1000)
    #: Confidence of the lower bounds: ``1 − alpha``.
    alpha: float = Field(0.05, gt=0, lt=1)
    #: Canary rows each party builds, each trained on with probability ½, to bound DP-SGD's ε from below in one
    #: run (Steinke, Nasr, Jagielski 2023); 0: none.
    canary_rows: int = Field(0, ge=0)

    @field_validator("canary_rows")
    @classmethod
    def _a_pair_at_least(cls, value: int) -> int:
        if value == 1:  # the audit guesses one canary "in" and one "out" at the least
            raise ValueError("`canary_rows` must be 0 (off) or at least 2")
        return value


class PrivacyConfig(_Section):
    client_dp: ClientDpConfig | None = None
    sample_dp: SampleDpConfig | None = None
    secure_aggregation: SecAggParams | None = None
    homomorphic_encryption: CkksParams | None = None
    audit: AuditParams | None = None

    def enabled(self) -> list[str]:
        """The sections set, in declaration order (e.g. ``["client_dp", "secure_aggregation"]``)."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]
