"""Cutting each party's dataset ``D_k`` into per-round chunks, and sizing its micro-batches.

A strategy decides ``R_k``, the number of rounds party ``k`` needs for one pass (epoch) over ``D_k``; every epoch
reshuffles ``D_k`` and cuts it into ``R_k`` consecutive, near-equal chunks, so chunks are disjoint within an
epoch and together hold every row. With ``V_k`` the party's volume (samples, or tokens with ``unit: tokens``):

* ``fixed_size`` (``size`` S):        ``R_k = ⌈V_k / S⌉``, chunks of at most ``min(S, V_k)``.
* ``percentage`` (``fraction`` p):    ``R_k = ⌈1/p⌉`` for every party, chunks of at most ``⌈p·V_k⌉``.
* ``max_volume`` (``max`` M):         ``R_k = ⌈V_k / M⌉``; with ``equal_rounds`` every party uses
  ``R = max_k ⌈V_k / M⌉``, so the largest party fixes the pace and all finish an epoch together.
* ``memory``: the micro-batch is the largest divisor ``m`` of the batch size ``B`` (at most
  ``max_micro_batch``) with ``peak_bytes(m) ≤ safety_factor · available``, so ``grad_accum = B / m`` keeps the
  effective batch exactly ``B``; the round volume is ``steps_per_round`` optimizer steps,
  ``R_k = ⌈n_k / (steps · B)⌉``, and with ``balanced`` every party uses ``R = max_k R_k``.

Near-equal chunks (sizes ``⌊n/R⌋`` or ``⌈n/R⌉``) rather than full chunks plus a remainder keep every round's
work alike and make ``percentage`` finish in exactly ``⌈1/p⌉`` rounds. With ``unit: tokens`` the shuffled order
is filled greedily by token count: sample ``i`` (in epoch order, cumulative tokens ``E_i``, length ``l_i``) goes
to chunk ``⌊R · (E_i − l_i/2) / T⌋``, the chunk its token midpoint falls in, so rounding never accumulates and a
chunk holds at most ``T/R`` plus one sample's tokens. Every chunk keeps at least one sample.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mpctf.registry import Registry

Unit = Literal["samples", "tokens"]


@dataclass(frozen=True)
class PartyDataStats:
    """What planning needs to know about one party's training data: its size and each sample's token count."""

    num_samples: int
    token_lengths: list[int]

    def __post_init__(self) -> None:
        if len(self.token_lengths) != self.num_samples:
            raise ValueError(f"{len(self.token_lengths)} token lengths for {self.num_samples} samples")
        if any(n < 1 for n in self.token_lengths):
            raise ValueError("every sample must have at least one token")

    @property
    def num_tokens(self) -> int:
        return sum(self.token_lengths)

    def volume(self, unit: Unit) -> int:
        return self.num_tokens if unit == "tokens" else self.num_samples


@dataclass(frozen=True)
class MemoryBudget:
    """A party's memory: the bytes free for training, and the estimated peak bytes of a step at a micro-batch.

    ``peak_bytes(m)`` must grow with ``m``; build it from
    :func:`mpctf.party.memory.estimate_training_memory` at the configured sequence length, e.g.
    ``lambda m: estimate_training_memory(..., micro_batch=m).total``.
    """

    available_bytes: int
    peak_bytes: Callable[[int], int]


@dataclass(frozen=True)
class PartyPlan:
    """How one party trains each round.

    ``chunk_samples``/``chunk_tokens`` are the largest chunk (``⌈n/R⌉`` samples; with ``unit: tokens``,
    ``chunk_tokens = ⌈T/R⌉`` is the per-round token target and ``chunk_samples`` the typical count);
    ``chunk_tokens`` is ``None`` when the volume is counted in samples. ``micro_batch · grad_accum`` is the
    batch size. ``est_peak_bytes``/``available_bytes`` are ``None`` when no memory budget was given.
    """

    party: str
    num_samples: int
    num_tokens: int
    chunk_samples: int
    chunk_tokens: int | None
    rounds_per_epoch: int
    micro_batch: int
    grad_accum: int
    est_peak_bytes: int | None
    available_bytes: int | None


class ChunkingParams(BaseModel):
    """Base for a chunking strategy's parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VolumeParams(ChunkingParams):
    unit: Unit = "samples"


class ChunkingStrategy(ABC):
    """Decides each party's rounds per epoch and, where it looks at memory, its micro-batch."""

    Params: ClassVar[type[ChunkingParams]] = ChunkingParams
    registered_name: ClassVar[str]

    def __init__(self, params: ChunkingParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @property
    def unit(self) -> Unit:
        return getattr(self.params, "unit", "samples")

    @abstractmethod
    def rounds_per_epoch(self, stats: Mapping[str, PartyDataStats], *, batch_size: int) -> dict[str, int]:
        """``R_k`` for every party."""

    def micro_batch(self, party: str, budget: MemoryBudget | None, *, batch_size: int) -> int:
        """The micro-batch; the whole batch unless the strategy sizes it from memory."""
        return batch_size


CHUNKINGS: Registry[ChunkingStrategy] = Registry("chunking strategy")


# --- planning -----------------------------------------------------------------------------------------------
def plan_parties(
    strategy: str,
    params: dict[str, Any],
    stats: dict[str, PartyDataStats],
    *,
    batch_size: int,
    memory: dict[str, MemoryBudget] | None = None,
) -> dict[str, PartyPlan]:
    """Plan every party's chunks and micro-batches; ``ValueError`` naming the party and the fix otherwise."""
    if strategy not in CHUNKINGS:
        raise ValueError(f"unknown chunking strategy {strategy!r}; known: {', '.join(CHUNKINGS.names())}")
    cls = CHUNKINGS.get(strategy)
    chunker = cls(cls.Params(**params))
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    if not stats:
        raise ValueError("no parties to plan")
    for party, s in stats.items():
        if s.num_samples < batch_size:
            raise ValueError(
                f"party {party!r} has {s.num_samples} samples, fewer than one batch of {batch_size}"
            )
    memory = memory or {}
    strangers = sorted(set(memory) - set(stats))
    if strangers:
        raise ValueError(f"memory budget given for parties without data stats: {strangers}")
    rounds = chunker.rounds_per_epoch(stats, batch_size=batch_size)
    return {
        party: _party_plan(party, s, rounds[party], chunker, memory.get(party), batch_size=batch_size)
        for party, s in stats.items()
    }


def _party_plan(
    party: str,
    s: PartyDataStats,
    rounds: int,
    chunker: ChunkingStrategy,
    budget: MemoryBudget | None,
    *,
    batch_size: int,
) -> PartyPlan:
    if rounds > s.num_samples:
        raise ValueError(
            f"party {party!r} has {s.num_samples} samples, fewer than the {rounds} rounds per epoch that "
            f"chunking {chunker.registered_name!r} gives it (every round needs at least one sample)"
        )
    micro = chunker.micro_batch(party, budget, batch_size=batch_size)
    return PartyPlan(
        party=party,
        num_samples=s.num_samples,
        num_tokens=s.num_tokens,
        chunk_samples=math.ceil(s.num_samples / rounds),
        chunk_tokens=math.ceil(s.num_tokens / rounds) if chunker.unit == "tokens" else None,
        rounds_per_epoch=rounds,
        micro_batch=micro,
        grad_accum=batch_size // micro,
        est_peak_bytes=budget.peak_bytes(micro) if budget else None,
        available_bytes=budget.available_bytes if budget else None,
    )


def _rounds_for_budget(
    stats: Mapping[str, PartyDataStats], budget: int, unit: Unit, knob: str
) -> dict[str, int]:
    """``⌈V_k / budget⌉`` per party; in tokens the budget must hold each party's longest sample."""
    if unit == "tokens":
        for party, s in stats.items():
            longest = max(s.token_lengths)
            if budget < longest:
                raise ValueError(
                    f"`{knob}` {budget} tokens is smaller than one sample: party {party!r} has a sample "
                    f"of {longest} tokens"
                )
    return {party: math.ceil(s.volume(unit) / budget) for party, s in stats.items()}


# --- strategies ---------------------------------------------------------------------------------------------
class FixedSizeParams(VolumeParams):
    size: int = Field(gt=0, description="samples (or tokens) per party per round")


@CHUNKINGS.register("fixed_size")
class FixedSize(ChunkingStrategy):
    """Every party trains on at most ``size`` samples (tokens) per round: ``R_k = ⌈V_k / S⌉``."""

    Params = FixedSizeParams
    params: FixedSizeParams

    def rounds_per_epoch(self, stats: Mapping[str, PartyDataStats], *, batch_size: int) -> dict[str, int]:
        return _rounds_for_budget(stats, self.params.size, self.unit, "size")


class PercentageParams(VolumeParams):
    fraction: float = Field(gt=0, le=1, description="share of the party's data per round, in (0, 1]")


@CHUNKINGS.register("percentage")
class Percentage(ChunkingStrategy):
    """Every party trains on a ``fraction`` p of its data per round and finishes an epoch in ``⌈1/p⌉`` rounds."""

    Params = PercentageParams
    params: PercentageParams

    def rounds_per_epoch(self, stats: Mapping[str, PartyDataStats], *, batch_size: int) -> dict[str, int]:
        # The fraction the user meant rather than its binary float: 0.1 gives 10 rounds and 1/3 gives 3.
        rounds = math.ceil(1 / Fraction(self.params.fraction).limit_denominator(10**6))
        return dict.fromkeys(stats, rounds)


class MaxVolumeParams(VolumeParams):
    max: int = Field(gt=0, description="most samples (or tokens) a party trains on per round")
    equal_rounds: bool = False


@CHUNKINGS.register("max_volume")
class MaxVolume(ChunkingStrategy):
    """At most ``max`` per round; with ``equal_rounds`` all parties take the largest party's ``⌈V_k / M⌉``."""

    Params = MaxVolumeParams
    params: MaxVolumeParams

    def rounds_per_epoch(self, stats: Mapping[str, PartyDataStats], *, batch_size: int) -> dict[str, int]:
        rounds = _rounds_for_budget(stats, self.params.max, self.unit, "max")
        return dict.fromkeys(stats, max(rounds.values())) if self.params.equal_rounds else rounds


class MemoryParams(ChunkingParams):
    safety_factor: float = Field(
        0.9, gt=0, le=1, description="share of the available memory training may use"
    )
    balanced: bool = True
    max_micro_batch: int | None = Field(None, ge=1)
    steps_per_round: int = Field(
        10, ge=1, description="optimizer steps per round (of the largest party if balanced)"
    )


@CHUNKINGS.register("memory")
class MemorySized(ChunkingStrategy):
    """Micro-batch from memory, round volume from optimizer steps; see the module docstring for the formulas.

    Memory bounds the micro-batch, not the chunk: a chunk is streamed one micro-batch at a time, so its size
    costs time, not memory.
    """

    Params = MemoryParams
    params: MemoryParams

    def rounds_per_epoch(self, stats: Mapping[str, PartyDataStats], *, batch_size: int) -> dict[str, int]:
        per_round = self.params.steps_per_round * batch_size
        rounds = {party: math.ceil(s.num_samples / per_round) for party, s in stats.items()}
        return dict.fromkeys(stats, max(rounds.values())) if self.params.balanced else rounds

    def micro_batch(self, party: str, budget: MemoryBudget | None, *, batch_size: int) -> int:
        if budget is None:
            raise ValueError(f"chunking 'memory' needs a memory budget for party {party!r}")
        usable = self.params.safety_factor * budget.available_bytes
        cap = min(batch_size, self.params.max_micro_batch or batch_size)
        for m in sorted(divisors_at_most(batch_size, cap), reverse=True):
            if budget.peak_bytes(m) <= usable:
                return m
        raise ValueError(
            f"party {party!r} cannot train even one sample per micro-batch: it needs about "
            f"{budget.peak_bytes(1) / 2**30:.2f} GiB, {self.params.safety_factor:g} × "
            f"{budget.available_bytes / 2**30:.2f} GiB available; shorten the sequences or use LoRA"
        )


def divisors_at_most(n: int, cap: int) -> list[int]:
    """Divisors of ``n`` not above ``cap``: micro-batches that split a batch of ``n`` into equal parts."""
    return [d for d in range(1, min(n, cap) + 1) if n % d == 0]


# --- chunks of one round ------------------------------------------------------------------------------------
def epoch_of(plan: PartyPlan, round_num: int) -> int:
    """The epoch (1-based) that round ``round_num`` (1-based) of this party belongs to."""
    if round_num < 1:
        raise ValueError(f"`round_num` starts at 1, got {round_num}")
    return (round_num - 1) // plan.rounds_per_epoch + 1


def epoch_permutation(party: str, num_samples: int, epoch: int, seed: int) -> np.ndarray:
    """This party's sample order in ``epoch``, seeded by a stable hash of ``(seed, party, epoch)``.

    Python's ``hash()`` of a string changes per process, so the seed goes through BLAKE2b instead: every process
    (the party's DDP workers, a resumed run) derives the same order.
    """
    digest = hashlib.blake2b(f"{seed}/{party}/{epoch}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little")).permutation(num_samples)


def token_boundaries(lengths: Sequence[int], rounds: int) -> list[int]:
    """Cut points ``0 = b_0 < b_1 < … < b_R = n`` of ``lengths`` (in epoch order) into ``rounds`` chunks.

    Sample ``i`` belongs to chunk ``⌊R · (E_i − l_i/2) / T⌋`` (its token midpoint), computed in integers as
    ``R · (2 E_i − l_i) < 2 r T``; the cuts are then nudged so that every chunk keeps at least one sample.
    """
    n = len(lengths)
    if not 1 <= rounds <= n:
        raise ValueError(f"cannot cut {n} samples into {rounds} non-empty chunks")
    ends = np.cumsum(np.asarray(lengths, dtype=np.int64))
    twice_mid = rounds * (2 * ends - np.asarray(lengths, dtype=np.int64))
    inner = np.searchsorted(twice_mid, 2 * int(ends[-1]) * np.arange(1, rounds), side="left")
    cuts = np.concatenate([[0], inner])
    steps = np.arange(rounds)
    cuts = np.maximum.accumulate(cuts - steps) + steps  # b_r >= b_{r-1} + 1
    cuts = np.minimum(cuts, n - rounds + steps)  # leaves one sample for each later chunk
    return [*cuts.tolist(), n]


def chunk_indices(plan: PartyPlan, token_lengths: Sequence[int], round_num: int, seed: int) -> list[int]:
    """The row indices of this party's chunk for round ``round_num`` (1-based), in training order."""
    if len(token_lengths) != plan.num_samples:
        raise ValueError(
            f"party {plan.party!r}: {len(token_lengths)} token lengths for a plan of {plan.num_samples} samples"
        )
    epoch = epoch_of(plan, round_num)
    r = (round_num - 1) % plan.rounds_per_epoch
    order = epoch_permutation(plan.party, plan.num_samples, epoch, seed)
    if plan.chunk_tokens is None:
        start = r * plan.num_samples // plan.rounds_per_epoch
        stop = (r + 1) * plan.num_samples // plan.rounds_per_epoch
    else:
        cuts = token_boundaries(np.asarray(token_lengths)[order], plan.rounds_per_epoch)
        start, stop = cuts[r], cuts[r + 1]
    return order[start:stop].tolist()
