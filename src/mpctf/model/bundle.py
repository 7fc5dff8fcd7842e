"""A loaded model ready to train: base model wrapped by its training mode, tokenizer, device."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mpctf.config import RunConfig, TrainingConfig
from mpctf.errors import ConfigError
from mpctf.model.loading import base_folder, load_tokenizer
from mpctf.model.modes import MODES, TrainingMode


def pick_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


@dataclass
class ModelBundle:
    model: torch.nn.Module
    tokenizer: object
    mode: TrainingMode
    device: torch.device
    load_seconds: float
    #: The run's seed: random base weights (``tiny-llama``) and initial trainable state are drawn from it.
    seed: int = 0

    @classmethod
    def load(cls, config: RunConfig, training: TrainingConfig | None = None) -> ModelBundle:
        """Load the configured model once; the same seed gives every process the same initial trainable state.

        ``training`` overrides ``config.training`` (a party with its own LoRA rank).
        """
        start = time.perf_counter()
        training = training or config.training
        tokenizer = load_tokenizer(config.model.name)
        mode = MODES.get(training.mode)(training, config.model)
        base = mode.load_base(seed=config.seed, vocab_size=len(tokenizer))
        try:
            model = mode.prepare(base, seed=config.seed)
        except ValueError as exc:  # "<config key>: <reason>"
            key, _, reason = str(exc).partition(": ")
            raise ConfigError(f"config key `{key}`: {reason}") from None
        device = pick_device()
        mode.place(model, device)
        return cls(model, tokenizer, mode, device, time.perf_counter() - start, seed=config.seed)

    def base_folder(self, run_dir: Path) -> str:
        """A local folder (or cached id) holding exactly this bundle's base weights; see
        :func:`mpctf.model.loading.base_folder`."""
        return base_folder(
            self.mode.model_config, seed=self.seed, vocab_size=len(self.tokenizer), run_dir=run_dir
        )

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)  # type: ignore[attr-defined]
