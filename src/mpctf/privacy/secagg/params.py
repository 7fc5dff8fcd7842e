"""Parameters of secure aggregation, validated where they are defined."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SecAggParams(BaseModel):
    """Secure aggregation (SecAgg, or SecAgg+ with ``num_neighbours``) and its fixed-point ring encoding.

    Floats are clamped to ``[-clip_range, clip_range]``, scaled by ``scale`` and rounded into ``Z_2^bits``;
    the sum of ``n`` parties must fit, so ``n · clip_range · scale < 2^(bits-1)`` is checked before masking.
    Masked vectors travel in the narrowest of int8, int16, int32 and int64 that holds ``bits``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Shares needed to rebuild a secret; ``None`` means a majority of each secret's holders.
    threshold: int | None = Field(None, ge=2)
    #: SecAgg+: each party masks with and shares secrets among this many neighbours (even); ``None``: all.
    num_neighbours: int | None = Field(None, ge=2)
    bits: int = Field(32, ge=8, le=62)
    scale: float = Field(2.0**20, gt=0)
    clip_range: float = Field(1.0, gt=0)
    #: Round floats up or down at random, in proportion to the remainder: unbiased codes at a coarse ``scale``.
    stochastic_rounding: bool = False

    @model_validator(mode="after")
    def _check(self) -> SecAggParams:
        if self.num_neighbours is not None and self.num_neighbours % 2:
            raise ValueError(f"`num_neighbours` must be even (a ring graph), got {self.num_neighbours}")
        if (
            self.num_neighbours is not None
            and self.threshold is not None
            and self.threshold > self.num_neighbours + 1
        ):
            raise ValueError(
                f"`threshold` must be <= num_neighbours + 1 = {self.num_neighbours + 1} (the holders of each "
                f"secret), got {self.threshold}"
            )
        return self

    def threshold_for(self, holders: int) -> int:
        """Shares needed among ``holders`` holders of one secret."""
        return self.threshold if self.threshold is not None else holders // 2 + 1

    def for_integer_codes(self, code_bits: int, num_parties: int) -> SecAggParams:
        """The ring an integer quantiser of ``code_bits`` bits asks for: codes in ``[−(2^(b−1)−1), 2^(b−1)−1]``
        with one public scale ``(2^(b−1)−1) / clip_range`` for every party (so their sum is exact), stochastic
        rounding (so it is unbiased), and just enough extra bits that a sum of ``num_parties`` cannot overflow."""
        if code_bits < 2 or num_parties < 1:
            raise ValueError(f"need code_bits >= 2 and num_parties >= 1, got {code_bits} and {num_parties}")
        headroom = math.ceil(math.log2(num_parties)) + 1
        return self.model_copy(
            update={
                "scale": (2 ** (code_bits - 1) - 1) / self.clip_range,
                "bits": max(8, code_bits + headroom),
                "stochastic_rounding": True,
            }
        )
