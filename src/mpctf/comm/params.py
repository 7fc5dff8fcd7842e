"""Range checks for codec parameters, with messages naming the field, the allowed interval and the value."""

from __future__ import annotations

import math


def check_interval(
    field: str,
    value: float,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` if it lies in the interval, else ``ValueError`` ("`x` must be in [0, 1), got 1.2")."""
    above = value > low if low_open else value >= low
    below = value < high if (high_open or math.isinf(high)) else value <= high
    if above and below:
        return value
    left = "(" if low_open else "["
    right = ")" if (high_open or math.isinf(high)) else "]"
    raise ValueError(f"`{field}` must be in {left}{low:g}, {high:g}{right}, got {value!r}")
