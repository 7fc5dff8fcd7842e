"""The training-mode contract: how the base model is built and wrapped, and which tensors are trained and exchanged.

A mode is chosen by ``training.mode``; its class reads only its own ``training.<section>`` (``sections``). The
exchanged state is exactly the trainable tensors, keyed the same way by :meth:`TrainingMode.get_state` and
:meth:`TrainingMode.trainable_parameters` (algorithm hooks address tensors by these keys). Loading a state checks
its keys and shapes and names the first one that is missing, unexpected or the wrong shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import ClassVar

import torch

from mpctf.config import ModelConfig, TrainingConfig
from mpctf.messages import NamedTensors
from mpctf.model.loading import load_model
from mpctf.registry import Registry


def check_state_keys(expected: Iterable[str], state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``ValueError`` naming the first key ``state`` lacks or has beyond ``expected``."""
    expected = set(expected)
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{what} lacks {len(missing)} tensor(s), first {missing[0]!r}")
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise ValueError(f"{what} has unexpected key {unexpected[0]!r}")


@torch.no_grad()
def copy_into(params: Mapping[str, torch.Tensor], state: NamedTensors, what: str) -> None:
    """Copy ``state`` into the tensors ``params`` (same keys, same shapes), converting dtype and device."""
    check_state_keys(params, state, what)
    for key, target in params.items():
        if state[key].shape != target.shape:
            raise ValueError(
                f"{what}: {key!r} has shape {tuple(state[key].shape)}, the model's is {tuple(target.shape)}"
            )
        target.copy_(state[key])


def cpu_copies(tensors: Mapping[str, torch.Tensor]) -> NamedTensors:
    """Detached CPU copies (a state must not alias the live parameters the optimizer changes)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


class TrainingMode(ABC):
    """How a base model is built and wrapped for training, and its trainable state.

    ``load_base`` builds the base model (the default loads ``model.name``), ``prepare`` wraps it so that exactly
    the exchanged tensors are trainable, ``place`` moves it to the device.
    """

    registered_name: ClassVar[str]
    #: The ``training`` config sections this mode reads.
    sections: ClassVar[tuple[str, ...]] = ()
    #: True when Opacus computes per-example gradients of this mode's trainable layers (sample-level DP-SGD).
    per_example_gradients: ClassVar[bool] = False
    #: True when parties only run the model forward (the state is searched without gradients).
    forward_only: ClassVar[bool] = False

    def __init__(self, config: TrainingConfig, model: ModelConfig) -> None:
        self.config = config
        self.model_config = model

    def load_base(self, *, seed: int, vocab_size: int) -> torch.nn.Module:
        """The base model this mode trains on (weights drawn from ``seed`` where they are random)."""
        return load_model(self.model_config, seed=seed, vocab_size=vocab_size)

    @abstractmethod
    def prepare(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        """Wrap the base model so that exactly the exchanged tensors are trainable (initialised from ``seed``);
        raises ``ValueError`` starting with the offending config key."""

    def place(self, model: torch.nn.Module, device: torch.device) -> None:
        """Move the prepared model to ``device``."""
        model.to(device)

    def trainable_parameters(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters keyed like :meth:`get_state` (algorithm hooks address them by these keys)."""
        return {self.state_key(n): p for n, p in model.named_parameters() if p.requires_grad}

    def state_key(self, parameter_name: str) -> str:
        """The state key of a parameter name."""
        return parameter_name

    @abstractmethod
    def get_state(self, model: torch.nn.Module) -> NamedTensors:
        """The trainable state, detached copies on CPU."""

    @abstractmethod
    def set_state(self, model: torch.nn.Module, state: NamedTensors) -> None:
        """Load a trainable state; raises ``ValueError`` naming a key the model does not know or lacks."""

    def merge_into_base(self, model: torch.nn.Module, pairs: NamedTensors) -> None:
        """Fold trained low-rank products into the frozen base weights (FLoRA); only LoRA supports it."""
        if pairs:
            raise ValueError(
                f"training mode {self.registered_name!r} cannot merge LoRA factors into the base"
            )

    @abstractmethod
    def save(self, model: torch.nn.Module, state: NamedTensors, folder: Path) -> None:
        """Save ``state`` in the format its library loads (PEFT: ``PeftModel.from_pretrained``; full models:
        ``AutoModelForCausalLM.from_pretrained``)."""


MODES: Registry[TrainingMode] = Registry("training mode")
