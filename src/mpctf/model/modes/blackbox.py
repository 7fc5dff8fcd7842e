"""Black-box prompt tuning (BBT, Sun et al., ICML 2022; federated as FedBPT, Sun et al., 2023): forward passes only.

The soft prompt is ``P = P₀ + reshape(A·z)``: ``P₀`` the embeddings of ``num_virtual_tokens`` vocabulary tokens
drawn from the run's seed, ``A`` a fixed random ``(n·h) × dim`` matrix drawn from the same seed (entries
``N(0, σ_E²/dim)``, ``σ_E`` the spread of the model's word embeddings, so a unit-scale ``z`` moves the prompt by
about one embedding's spread), and ``z`` the only state that is searched and exchanged (``dim`` floats: 2 KB at
500). The vehicle is PEFT's prompt tuning with a frozen virtual-token table into which ``P`` is written, so
evaluation, scoring and checkpoints are those of ``prompt_tuning``: a checkpoint is a PEFT prompt-tuning adapter
that any PEFT user loads, and it holds ``P``, not ``z``. The search itself (CMA-ES at each party) is
:mod:`mpctf.party.blackbox`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mpctf.messages import NamedTensors
from mpctf.model.modes.base import MODES, check_state_keys
from mpctf.model.modes.prompts import PromptLearningMode

#: The exchanged state's one key.
Z = "z"


@MODES.register("blackbox_prompt")
class BlackBoxPromptMode(PromptLearningMode):
    """``P = P₀ + A·z`` prepended to the input embeddings; ``z`` is searched without gradients."""

    sections = ("blackbox_prompt",)
    #: Parties never run a backward pass in this mode (:mod:`mpctf.party.blackbox` searches ``z``).
    forward_only = True

    def peft_config(self) -> Any:
        from peft import PromptTuningConfig

        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=self.config.blackbox_prompt.num_virtual_tokens,
            prompt_tuning_init="SAMPLE_VOCAB",
        )

    def prepare(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        peft_model = super().prepare(model, seed)
        table = self._table(peft_model)
        table.requires_grad_(False)
        section = self.config.blackbox_prompt
        words = peft_model.get_input_embeddings().weight  # type: ignore[operator]
        generator = torch.Generator().manual_seed(seed * 7919 + 17)
        spread = float(words.detach().float().std())
        #: The fixed projection (on the CPU; ``P`` is written into the table on its device).
        self.projection = torch.randn(table.numel(), section.dim, generator=generator) * (
            spread / section.dim**0.5
        )
        self.initial = table.detach().float().cpu().clone()
        self.z = torch.zeros(section.dim)
        return peft_model

    def _table(self, model: torch.nn.Module) -> torch.nn.Parameter:
        return self._encoder(model).embedding.weight  # type: ignore[return-value]

    def prompt(self, z: torch.Tensor) -> torch.Tensor:
        """The virtual-token embeddings ``P₀ + A·z`` for ``z``."""
        return self.initial + (self.projection @ z.float()).view_as(self.initial)

    def trainable_parameters(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {}  # nothing has a gradient: the party searches z (mpctf.party.blackbox)

    def get_state(self, model: torch.nn.Module) -> NamedTensors:
        return {Z: self.z.clone()}

    def set_state(self, model: torch.nn.Module, state: NamedTensors) -> None:
        check_state_keys([Z], state, "black-box prompt state")
        z = state[Z].detach().float().cpu().reshape(-1)
        if z.numel() != self.z.numel():
            raise ValueError(
                f"black-box prompt state: 'z' has {z.numel()} values, the model's has {self.z.numel()}"
            )
        self.z = z.clone()
        self.write_prompt(model, self.prompt(self.z))

    def write_prompt(self, model: torch.nn.Module, prompt: torch.Tensor) -> None:
        """Put virtual-token embeddings into the model (a candidate's, while a party scores it)."""
        with torch.no_grad():
            self._table(model).copy_(prompt)

    def save(self, model: torch.nn.Module, state: NamedTensors, folder: Path) -> None:
        self.set_state(model, state)
        model.save_pretrained(folder)  # type: ignore[operator]
