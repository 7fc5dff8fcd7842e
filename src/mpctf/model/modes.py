"""Training modes: how the base model is wrapped and which tensors are trained and exchanged.

Adapters move only through PEFT's ``get_peft_model_state_dict`` / ``set_peft_model_state_dict``; the keys that
loading reports as missing or unexpected are checked, never ignored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from mpctf.config import TrainingConfig
from mpctf.messages import NamedTensors
from mpctf.registry import Registry


class TrainingMode(ABC):
    registered_name: ClassVar[str]

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config

    @abstractmethod
    def prepare(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        """Wrap the base model so that exactly the exchanged tensors are trainable (initialised from ``seed``)."""

    @abstractmethod
    def get_state(self, model: torch.nn.Module) -> NamedTensors:
        """The trainable state, detached copies on CPU."""

    @abstractmethod
    def set_state(self, model: torch.nn.Module, state: NamedTensors) -> None:
        """Load a trainable state; raises ``ValueError`` naming a key the model does not know or lacks."""

    def trainable_parameters(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters keyed like :meth:`get_state` (algorithm hooks address them by these keys)."""
        return {self.state_key(n): p for n, p in model.named_parameters() if p.requires_grad}

    def state_key(self, parameter_name: str) -> str:
        """The state-dict key of a parameter name."""
        return parameter_name

    def merge_into_base(self, model: torch.nn.Module, pairs: NamedTensors) -> None:
        """Fold trained low-rank products into the frozen base weights (FLoRA); only LoRA supports it."""
        if pairs:
            raise ValueError(
                f"training mode {self.registered_name!r} cannot merge LoRA factors into the base"
            )

    @abstractmethod
    def save(self, model: torch.nn.Module, state: NamedTensors, folder: Path) -> None:
        """Save ``state`` in the format its library loads (PEFT: ``PeftModel.from_pretrained``)."""


MODES: Registry[TrainingMode] = Registry("training mode")


@MODES.register("lora")
class LoraMode(TrainingMode):
    """LoRA (Hu et al., 2021) through PEFT: only the adapter matrices are trained and exchanged."""

    def prepare(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        lora = self.config.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            try:
                return get_peft_model(model, peft_config)
            except ValueError as exc:
                raise ValueError(f"training.lora.target_modules: {str(exc).splitlines()[0]}") from None

    def state_key(self, parameter_name: str) -> str:
        # PEFT's state dict drops the adapter name from parameter names; hooks must use the same keys.
        return parameter_name.replace(".default.", ".")

    def get_state(self, model: torch.nn.Module) -> NamedTensors:
        from peft import get_peft_model_state_dict

        return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}

    def set_state(self, model: torch.nn.Module, state: NamedTensors) -> None:
        from peft import set_peft_model_state_dict

        expected = set(self.get_state(model))
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"adapter state lacks {len(missing)} tensor(s), first {missing[0]!r}")
        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise ValueError(f"adapter state has unexpected key {result.unexpected_keys[0]!r}")

    @torch.no_grad()
    def merge_into_base(self, model: torch.nn.Module, pairs: NamedTensors) -> None:
        """Add ``B @ A`` of each ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` pair to the module's
        frozen base weight (the scale is already folded into B by the strategy)."""
        for key_a, a in pairs.items():
            if not key_a.endswith(".lora_A.weight"):
                continue
            module_path = key_a.removesuffix(".lora_A.weight")
            b = pairs[f"{module_path}.lora_B.weight"]
            base = model.get_submodule(module_path).base_layer.weight
            base.add_((b.float() @ a.float()).to(base.dtype).to(base.device))

    def save(self, model: torch.nn.Module, state: NamedTensors, folder: Path) -> None:
        self.set_state(model, state)
        model.save_pretrained(folder)  # type: ignore[operator]
