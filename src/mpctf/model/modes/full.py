"""Every parameter trained and exchanged: full fine-tuning and (continued) pre-training.

The state is every trainable parameter under its ``named_parameters`` name; tied weights (an output layer
sharing the input embeddings) appear once, as PyTorch lists them. Checkpoints are whole models written with
``save_pretrained``, loadable with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mpctf.errors import ConfigError
from mpctf.messages import NamedTensors
from mpctf.model.loading import DTYPES, random_llama
from mpctf.model.modes.base import MODES, TrainingMode, copy_into, cpu_copies


@MODES.register("full")
class FullMode(TrainingMode):
    """Full fine-tuning: every weight ``θ`` is trained by the party and ``θ_local − θ_global`` is exchanged."""

    def prepare(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        model.requires_grad_(True)
        return model

    def get_state(self, model: torch.nn.Module) -> NamedTensors:
        return cpu_copies(self.trainable_parameters(model))

    def set_state(self, model: torch.nn.Module, state: NamedTensors) -> None:
        copy_into(self.trainable_parameters(model), state, "model state")

    def save(self, model: torch.nn.Module, state: NamedTensors, folder: Path) -> None:
        self.set_state(model, state)
        model.save_pretrained(folder)  # type: ignore[operator]


@MODES.register("pretrain")
class PretrainMode(FullMode):
    """Pre-training: like ``full``, but from a randomly initialised Llama of ``training.pretrain.architecture``
    (with ``model.name``'s tokenizer) when ``from_scratch`` is set, else continued pre-training of ``model.name``.
    Pair it with ``task.type: causal_lm``."""

    sections = ("pretrain",)

    def load_base(self, *, seed: int, vocab_size: int) -> torch.nn.Module:
        pretrain = self.config.pretrain
        if not pretrain.from_scratch:
            return super().load_base(seed=seed, vocab_size=vocab_size)
        if self.model_config.num_layers is not None:
            raise ConfigError(
                "config key `model.num_layers` cuts pretrained weights; from scratch, set "
                "training.pretrain.architecture.num_hidden_layers instead"
            )
        model = random_llama(pretrain.architecture, vocab_size=vocab_size, seed=seed)
        return model.to(DTYPES[self.model_config.dtype])
