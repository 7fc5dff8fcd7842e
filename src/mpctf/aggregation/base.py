"""The strategy contract: the server's aggregation and the party-side hooks of one algorithm.

A strategy sees one round as ``begin_round`` → (``state_for_party`` per selected party,
``party_instructions``, ``round_payload``: the round's tasks) → ``accumulate`` per accepted update (in arrival
order) → ``finalize``. ``configure_parties`` runs once before the first round and tells the strategy who takes
part (for example each party's LoRA rank). Strategies that can (FedAvg, FedOpt, dynamic weighting) keep a
running sum, so the server holds O(model) whatever the number of parties; robust ones that need every update
at once buffer them and say so.

Hyper-parameters live in a pydantic ``Params`` model per strategy, validated where it is defined; the shared knobs
(party sampling, minimum parties, timeouts) belong to the round loop's selection config, not to strategies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from mpctf.messages import NamedTensors, Update
from mpctf.registry import Registry


class StrategyParams(BaseModel):
    """Base for a strategy's own hyper-parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PartyHooks:
    """Party-side half of an algorithm. The default does nothing (plain local SGD).

    Before training, the trainer adds ``merge_into_base`` into the frozen base weights and trains only the
    tensors for which ``trainable`` is true. It calls ``extra_loss`` after computing the task loss,
    ``after_step`` after every optimizer step (without autograd), and ``after_training`` once, to add tensors to
    the update's ``extra``. Tensors are addressed by their trainable-state keys.
    """

    def trainable(self, name: str) -> bool:
        return True

    def merge_into_base(self) -> NamedTensors:
        """LoRA factor pairs (``<module>.lora_A.weight``, ``<module>.lora_B.weight``) whose product ``B @ A``
        the trainer adds into ``<module>``'s frozen base weight once, before training (scale folded in)."""
        return {}

    def extra_loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor | None:
        return None

    def after_step(self, params: dict[str, torch.nn.Parameter], lr: float) -> None:
        """Move the parameters after the optimizer's step (``lr`` is the local learning rate).

        A correction made here keeps its size whatever the local optimizer: added to the gradients instead, AdamW
        would normalise it with the gradients' moments, and DP-SGD's optimizer would overwrite it with the noised
        per-example sum.
        """
        return None

    def after_training(
        self, local: NamedTensors, global_state: NamedTensors, steps: int, lr: float
    ) -> NamedTensors:
        return {}


@dataclass(frozen=True)
class PartySpec:
    """What the server knows of one party before the first round (LoRA rank and alpha when it trains LoRA)."""

    lora_rank: int | None = None
    lora_alpha: float | None = None


class Strategy(ABC):
    """Server-side aggregation of one algorithm; see the module docstring for the call order."""

    Params: ClassVar[type[StrategyParams]] = StrategyParams
    registered_name: ClassVar[str]
    #: True when the strategy must see every update before combining them (memory O(parties × model)).
    buffers_updates: ClassVar[bool] = False
    #: True when the global LoRA factors are added into the base weights each round instead of being the
    #: adapter (flora): the server must merge them into its own model too, and a run cannot resume, since a
    #: restarted party's base no longer holds the earlier rounds.
    merges_into_base: ClassVar[bool] = False
    #: True when the global adapter holds ``ΔW = B A`` with the LoRA scale folded into ``B`` (hetlora,
    #: flexlora): the server's own adapter must then have ``lora_alpha = r``, or it would apply a scale twice.
    folds_lora_scale: ClassVar[bool] = False
    #: True when the server step depends on the updates only through their weighted mean, so it can be handed
    #: one mean computed from a secure sum, a decrypted CKKS aggregate or a DP-noised sum (privacy stages).
    aggregates_by_mean: ClassVar[bool] = False

    def __init__(self, params: StrategyParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.parties: dict[str, PartySpec] = {}

    def configure_parties(self, parties: Mapping[str, PartySpec]) -> None:
        """Learn every party of the run (not only this round's); called once before the first round."""
        self.parties = dict(parties)

    # --- server side -----------------------------------------------------------------------------
    @abstractmethod
    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        """Reset per-round accumulators; ``global_state`` is the state sent to the parties this round."""

    @abstractmethod
    def accumulate(self, update: Update) -> None:
        """Fold one validated, decoded update into the round's aggregate."""

    @abstractmethod
    def finalize(self) -> NamedTensors:
        """Return the new global state; called once per round after at least one ``accumulate``."""

    def state_for_party(self, party: str, global_state: NamedTensors) -> NamedTensors:
        """What ``party`` receives this round (its update is validated against it); the global state by default."""
        return global_state

    def round_payload(self) -> NamedTensors:
        """Extra tensors every selected party receives with this round's task (e.g. SCAFFOLD's ``c``)."""
        return {}

    def party_instructions(self) -> dict[str, Any]:
        """JSON-able settings the party-side hooks need (e.g. FedProx's ``mu``)."""
        return {}

    # --- party side ------------------------------------------------------------------------------
    @classmethod
    def party_hooks(
        cls,
        instructions: dict[str, Any],
        payload: NamedTensors,
        party: str,
        global_state: NamedTensors,
        party_state: dict[str, Any],
    ) -> PartyHooks:
        """Build the party-side hooks from what ``party_instructions``/``round_payload`` sent.

        ``party_state`` is one dict the party keeps across the whole run (e.g. SCAFFOLD's ``c_k``).
        """
        return PartyHooks()

    # --- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Server-side state to checkpoint (optimizer moments, control variates), tagged with the strategy name."""
        return {"strategy": self.registered_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses state saved by another strategy, naming both."""
        saved = state.get("strategy")
        if saved != self.registered_name:
            raise ValueError(
                f"checkpoint holds state of strategy {saved!r}, cannot load it into {self.registered_name!r}"
            )


STRATEGIES: Registry[Strategy] = Registry("strategy")


def weighted_sum_into(acc: NamedTensors | None, tensors: NamedTensors, weight: float) -> NamedTensors:
    """``acc + weight · tensors``, allocating ``acc`` on first use (the running-sum primitive).

    The sum is kept in float64, and each product is rounded before it is added (no fused multiply-add), because
    updates are folded in the order they arrive: in float32 that order changes the last bits of the result, so a
    resumed run could not reproduce an uninterrupted one. In float64 the products of float32 values with integer
    weights are exact and the sum rounds back to the same float32 in any order. Call :func:`sum_as_float32` to
    read it.
    """
    if acc is None:
        return {k: v.detach().to(torch.float64) * weight for k, v in tensors.items()}
    for k, v in tensors.items():
        acc[k].add_(v.detach().to(torch.float64) * weight)
    return acc


def sum_as_float32(acc: NamedTensors, divisor: float = 1.0) -> NamedTensors:
    """A running sum from :func:`weighted_sum_into` divided by ``divisor``, as float32; empties ``acc``."""
    return {k: acc.pop(k).div_(divisor).to(torch.float32) for k in list(acc)}
