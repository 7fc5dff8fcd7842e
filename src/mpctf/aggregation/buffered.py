"""The frame of strategies that must see every update at once (coordinate-wise median, trimmed mean, Krum).

They hold all of a round's deltas, O(parties × model) memory, and combine them per tensor in ``finalize``.
Weights are not used: each robust rule treats every answering party as one vote, as in its paper.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from mpctf.aggregation.base import Strategy
from mpctf.aggregation.ops import apply_delta
from mpctf.aggregation.validate import validate_update
from mpctf.errors import FederationError
from mpctf.messages import NamedTensors, Update


def stacked(deltas: list[NamedTensors], name: str) -> torch.Tensor:
    """Every party's delta of tensor ``name`` stacked on a new first axis, float32."""
    return torch.stack([d[name].to(torch.float32) for d in deltas])


def need_updates(strategy: str, got: int, need: int, why: str) -> None:
    """``FederationError`` when a round has fewer updates than the rule needs."""
    if got < need:
        raise FederationError(f"{strategy} needs at least {need} updates ({why}), this round has {got}")


class BufferedStrategy(Strategy):
    """Keeps the round's validated deltas; ``combine`` turns them into the round's delta."""

    buffers_updates = True

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        self._global = global_state
        self._deltas: list[NamedTensors] = []

    def accumulate(self, update: Update) -> None:
        validate_update(update, self.state_for_party(update.party, self._global))
        self._deltas.append({k: v.detach() for k, v in update.tensors.items()})

    def finalize(self) -> NamedTensors:
        if not self._deltas:
            raise RuntimeError("finalize() called before any update was accumulated")
        delta = self.combine(self._deltas)
        self._deltas = []  # free the buffered updates as soon as they are combined
        return apply_delta(self._global, delta)

    @abstractmethod
    def combine(self, deltas: list[NamedTensors]) -> NamedTensors:
        """The round's delta from every party's delta."""
