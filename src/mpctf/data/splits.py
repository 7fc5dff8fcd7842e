"""Assigning one dataset's rows to simulated parties: who holds which rows.

Real deployments never split: each party brings its own data. Simulations (benchmarks, papers, tests) take one
dataset and deal its rows out with a controlled amount of heterogeneity:

* ``iid``: a uniform random deal; party sizes differ by at most one row.
* ``dirichlet``: label skew (Hsu, Qi and Brown, 2019, "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification"): for every label ``c``, proportions ``q_c ~ Dir(alpha · 1_K)`` deal that
  label's rows to the ``K`` parties. Small ``alpha`` gives each party few labels; large ``alpha`` tends to iid.
* ``by_key``: a natural key (a movie, a user, a hospital) never crosses parties; whole key groups are dealt to
  the least-loaded party, largest group first (greedy LPT balancing, Graham 1969).
* ``quantity_skew``: the same label mix everywhere but unequal party sizes ``n_k = m + round((N − K·m) · q_k)``
  with ``q ~ Dir(alpha · 1_K)`` or ``q_k ∝ rank_k^(−exponent)`` (a power law over a random ranking of parties)
  and ``m`` the minimum party size (Li et al., 2022, "Federated Learning on Non-IID Data Silos").

Every method is deterministic given ``seed`` and returns disjoint, covering, sorted row lists.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mpctf.registry import Registry

#: Re-draws allowed before ``dirichlet`` gives up on meeting ``min_party_size`` (standard practice resamples).
_MAX_DRAWS = 1000


class SplitParams(BaseModel):
    """Base for a split method's parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SplitInput:
    """What a split method may look at: the row count and, when given, each row's label and key."""

    num_rows: int
    labels: Sequence[Hashable] | None
    keys: Sequence[Hashable] | None


class SplitMethod(ABC):
    """One way of dealing rows to parties; ``split`` returns the row indices of each party."""

    Params: ClassVar[type[SplitParams]] = SplitParams
    registered_name: ClassVar[str]

    def __init__(self, params: SplitParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def split(self, data: SplitInput, num_parties: int, rng: np.random.Generator) -> list[list[int]]:
        """Row indices per party (any order; the caller sorts them)."""


SPLITS: Registry[SplitMethod] = Registry("split method")


def assign_to_parties(
    method: str,
    params: dict[str, Any],
    num_parties: int,
    *,
    labels: Sequence[Hashable] | None = None,
    keys: Sequence[Hashable] | None = None,
    seed: int,
    num_rows: int | None = None,
) -> list[list[int]]:
    """Deal the rows of one dataset to ``num_parties`` parties with the split ``method``.

    ``labels``/``keys`` give each row's label or natural key (needed by ``dirichlet``/``by_key``); ``num_rows``
    is needed only when neither is given. Returns sorted row indices per party: disjoint, covering every row,
    and identical for identical arguments. Raises ``ValueError`` with the reason on any invalid input.
    """
    if method not in SPLITS:
        raise ValueError(f"unknown split method {method!r}; known: {', '.join(SPLITS.names())}")
    cls = SPLITS.get(method)
    splitter = cls(cls.Params(**params))
    if num_parties < 1:
        raise ValueError(f"`num_parties` must be >= 1, got {num_parties}")
    data = SplitInput(_row_count(num_rows, labels, keys), labels, keys)
    if data.num_rows < num_parties:
        raise ValueError(
            f"cannot split {data.num_rows} rows among {num_parties} parties: fewer rows than parties"
        )
    parts = splitter.split(data, num_parties, np.random.default_rng(seed))
    return [sorted(int(i) for i in part) for part in parts]


def _row_count(
    num_rows: int | None, labels: Sequence[Hashable] | None, keys: Sequence[Hashable] | None
) -> int:
    counts = {name: len(seq) for name, seq in (("labels", labels), ("keys", keys)) if seq is not None}
    if num_rows is not None:
        counts["num_rows"] = num_rows
    if not counts:
        raise ValueError("give `num_rows`, `labels` or `keys`: the number of rows to split is unknown")
    if len(set(counts.values())) > 1:
        raise ValueError(f"row counts disagree: {', '.join(f'{k}={v}' for k, v in counts.items())}")
    return next(iter(counts.values()))


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split the integer ``total`` in proportion to ``weights`` by largest remainders (Hamilton's method).

    The parts sum to ``total`` exactly and each differs from its exact share by less than one; ties in the
    remainders go to the lower index, so the result is deterministic.
    """
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or w.size == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"cannot apportion {total} by weights {list(weights)}")
    exact = total * w / w.sum()
    parts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - parts), kind="stable")
    parts[order[: total - int(parts.sum())]] += 1
    return [int(p) for p in parts]


def _cut(rows: np.ndarray, sizes: Sequence[int]) -> list[list[int]]:
    """Consecutive slices of ``rows`` with the given sizes."""
    bounds = np.cumsum([0, *sizes])
    return [rows[a:b].tolist() for a, b in itertools.pairwise(bounds)]


# --- iid ----------------------------------------------------------------------------------------------------
@SPLITS.register("iid")
class IidSplit(SplitMethod):
    """Uniformly random deal; sizes ``⌊N/K⌋`` or ``⌈N/K⌉``, the larger ones to the first ``N mod K`` parties."""

    def split(self, data: SplitInput, num_parties: int, rng: np.random.Generator) -> list[list[int]]:
        sizes = apportion(data.num_rows, [1.0] * num_parties)
        return _cut(rng.permutation(data.num_rows), sizes)


# --- dirichlet label skew -----------------------------------------------------------------------------------
class DirichletParams(SplitParams):
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; small = strong label skew")
    min_party_size: int = Field(1, ge=0, description="re-draw until every party has at least this many rows")


@SPLITS.register("dirichlet")
class DirichletSplit(SplitMethod):
    """Label skew: each label's rows are dealt by proportions ``q_c ~ Dir(alpha · 1_K)`` (largest remainders)."""

    Params = DirichletParams
    params: DirichletParams

    def split(self, data: SplitInput, num_parties: int, rng: np.random.Generator) -> list[list[int]]:
        if data.labels is None:
            raise ValueError("split method 'dirichlet' needs `labels` (one per row)")
        groups = _groups(data.labels)
        needed = self.params.min_party_size * num_parties
        if needed > data.num_rows:
            raise ValueError(
                f"`min_party_size` {self.params.min_party_size} × {num_parties} parties needs {needed} rows, "
                f"the dataset has {data.num_rows}"
            )
        for _ in range(_MAX_DRAWS):
            parts = self._draw(groups, num_parties, rng)
            if min(len(p) for p in parts) >= self.params.min_party_size:
                return parts
        raise ValueError(
            f"dirichlet split with alpha={self.params.alpha} left a party with fewer than "
            f"{self.params.min_party_size} rows in {_MAX_DRAWS} draws; raise `alpha` or lower `min_party_size`"
        )

    def _draw(self, groups: list[list[int]], num_parties: int, rng: np.random.Generator) -> list[list[int]]:
        parts: list[list[int]] = [[] for _ in range(num_parties)]
        for rows in groups:
            shares = rng.dirichlet(np.full(num_parties, self.params.alpha))
            for part, chunk in zip(
                parts, _cut(rng.permutation(rows), apportion(len(rows), shares)), strict=True
            ):
                part.extend(chunk)
        return parts


def _groups(values: Sequence[Hashable]) -> list[list[int]]:
    """Row indices grouped by value, groups in order of first appearance (deterministic, needs no sorting)."""
    groups: dict[Hashable, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(v, []).append(i)
    return list(groups.values())


# --- by natural key -----------------------------------------------------------------------------------------
@SPLITS.register("by_key")
class ByKeySplit(SplitMethod):
    """Whole key groups per party, balanced by rows: groups in random order, then largest first, each to the
    party with the fewest rows so far (ties to the lower party index). LPT keeps the largest party within
    ``4/3`` of the best possible balance."""

    def split(self, data: SplitInput, num_parties: int, rng: np.random.Generator) -> list[list[int]]:
        if data.keys is None:
            raise ValueError("split method 'by_key' needs `keys` (one per row)")
        groups = _groups(data.keys)
        if len(groups) < num_parties:
            raise ValueError(
                f"split method 'by_key' needs at least one key group per party: "
                f"{len(groups)} distinct keys for {num_parties} parties"
            )
        shuffled = [groups[i] for i in rng.permutation(len(groups))]
        # The stable sort keeps the seeded order among groups of equal size: the seed decides ties.
        shuffled.sort(key=len, reverse=True)
        parts: list[list[int]] = [[] for _ in range(num_parties)]
        for rows in shuffled:
            min(parts, key=len).extend(rows)
        return parts


# --- quantity skew ------------------------------------------------------------------------------------------
class QuantitySkewParams(SplitParams):
    distribution: Literal["dirichlet", "power_law"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (distribution: dirichlet)")
    exponent: float = Field(1.0, ge=0, description="q_k ∝ rank^-exponent (distribution: power_law)")
    min_party_size: int = Field(1, ge=0, description="rows every party gets before the skewed deal")

    @model_validator(mode="after")
    def _only_relevant_knobs(self) -> QuantitySkewParams:
        unused = "exponent" if self.distribution == "dirichlet" else "alpha"
        if unused in self.model_fields_set:
            raise ValueError(f"`{unused}` has no effect with distribution {self.distribution!r}")
        return self


@SPLITS.register("quantity_skew")
class QuantitySkewSplit(SplitMethod):
    """Unequal party sizes: ``n_k = m + apportion(N − K·m, q)_k`` over a random permutation of the rows."""

    Params = QuantitySkewParams
    params: QuantitySkewParams

    def split(self, data: SplitInput, num_parties: int, rng: np.random.Generator) -> list[list[int]]:
        m = self.params.min_party_size
        spare = data.num_rows - m * num_parties
        if spare < 0:
            raise ValueError(
                f"`min_party_size` {m} × {num_parties} parties needs {m * num_parties} rows, "
                f"the dataset has {data.num_rows}"
            )
        sizes = [m + extra for extra in apportion(spare, self._shares(num_parties, rng))]
        return _cut(rng.permutation(data.num_rows), sizes)

    def _shares(self, num_parties: int, rng: np.random.Generator) -> np.ndarray:
        if self.params.distribution == "dirichlet":
            return rng.dirichlet(np.full(num_parties, self.params.alpha))
        ranks = rng.permutation(num_parties) + 1
        return ranks.astype(np.float64) ** -self.params.exponent
