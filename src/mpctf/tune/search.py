"""Successive halving (Jamieson and Talwalkar, 2016; the synchronous form of ASHA, Li et al., 2020), pure.

Which configurations to try, how many rounds each rung gives its trials, and which trials a rung keeps. Nothing
here trains: :mod:`mpctf.tune.runner` runs the trials.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trial:
    """One configuration of the search: its overrides and its validation score after each rung."""

    number: int
    overrides: dict[str, Any]
    #: Rounds run so far and the validation score at the last of them, per rung reached.
    scores: list[tuple[int, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"trial-{self.number:02d}"


def grid(space: dict[str, list[Any]], trials: int, seed: int) -> list[dict[str, Any]]:
    """The grid of ``space`` when it has at most ``trials`` points, else a seeded sample of ``trials`` of them."""
    keys = list(space)
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*space.values())]
    if len(points) <= trials:
        return points
    return [points[i] for i in sorted(random.Random(f"tune:{seed}").sample(range(len(points)), trials))]


def rung_rounds(min_rounds: int, eta: int, max_rounds: int, trials: int) -> list[int]:
    """Total rounds a surviving trial has run after each rung: ``min_rounds · eta^k`` for the rungs it takes to
    halve ``trials`` down to one, then ``max_rounds`` (``federation.rounds``) for the last rung."""
    rungs = math.ceil(math.log(trials, eta) - 1e-9) + 1 if trials > 1 else 1
    rounds = [r for r in (min_rounds * eta**k for k in range(rungs - 1)) if r < max_rounds]
    return [*rounds, max_rounds]


def keep(trials: list[Trial], eta: int, higher_is_better: bool, last_rung: bool) -> list[Trial]:
    """The best ``⌈n/eta⌉`` trials by their latest score (one when this was the last rung); ties go to the
    lower trial number, so the search is deterministic."""
    ranked = sorted(trials, key=lambda t: ((-1 if higher_is_better else 1) * t.scores[-1][1], t.number))
    return ranked[:1] if last_rung else ranked[: math.ceil(len(trials) / eta)]


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``config`` with each dotted key of ``overrides`` set (a whole value replaces what was there)."""
    out = copy.deepcopy(config)
    for dotted, value in overrides.items():
        node = out
        *path, last = dotted.split(".")
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"tune.space: `{dotted}` goes through {part!r}, which is not a section")
        node[last] = copy.deepcopy(value)
    return out
