"""Constrained number types for strategies' ``Params`` models, with messages that name the key and the bound.

``Annotated[float, in_range(0, 1, high_open=True)]`` rejects 1.2 with "`beta_2` must be in [0, 1), got 1.2".
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> AfterValidator:
    """A pydantic validator accepting finite values between ``low`` and ``high`` (open ends as told)."""
    shown = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: float, info: ValidationInfo) -> float:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            raise ValueError(f"`{info.field_name}` must be in {shown}, got {value!r}")
        return value

    return AfterValidator(check)


def at_least(low: float, *, strict: bool = False) -> AfterValidator:
    """A pydantic validator accepting finite values ``>= low`` (``> low`` when ``strict``)."""

    def check(value: float, info: ValidationInfo) -> float:
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            raise ValueError(f"`{info.field_name}` must be {'>' if strict else '>='} {low:g}, got {value!r}")
        return value

    return AfterValidator(check)


#: [0, 1): decay rates and momenta.
Decay = Annotated[float, in_range(0.0, 1.0, high_open=True)]
#: > 0: learning rates, norm bounds, the adaptivity constant τ.
Positive = Annotated[float, at_least(0.0, strict=True)]
#: >= 0: penalty weights and exponents.
NonNegative = Annotated[float, at_least(0.0)]
#: >= 0 integers: counts of Byzantine parties.
Count = Annotated[int, at_least(0)]
#: >= 1 integers: ranks and numbers of selected updates.
PositiveCount = Annotated[int, at_least(1)]
