"""Adapters injected into the base model's layers through PEFT: LoRA, QLoRA and IA3.

Adapters move only through PEFT's ``get_peft_model_state_dict`` / ``set_peft_model_state_dict``; the keys that
loading reports as missing or unexpected are checked, never ignored.
"""

from __future__ import annotations

import importlib.util
import re
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch

from mpctf.config import LoraConfig
from mpctf.errors import ConfigError
from mpctf.messages import NamedTensors
from mpctf.model.loading import DTYPES, load_model
from mpctf.model.modes.base import MODES, TrainingMode, check_state_keys, cpu_copies

# PEFT's state dicts drop the adapter's name ("default") from parameter names.
_ADAPTER_NAME = re.compile(r"\.default(?=\.|$)")


class AdapterMode(TrainingMode):
    """Base for PEFT adapters inside the model's layers: only the adapter tensors are trained and exchanged."""

    @abstractmethod
    def peft_config(self) -> Any:
        """The PEFT config of the adapter (``task_type="CAUSAL_LM"``)."""

    def prepare(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        from peft import get_peft_model

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            try:
                return get_peft_model(model, self.peft_config())
            except ValueError as exc:
                raise ValueError(
                    f"training.{self.sections[0]}.target_modules: {str(exc).splitlines()[0]}"
                ) from None

    def state_key(self, parameter_name: str) -> str:
        return _ADAPTER_NAME.sub("", parameter_name)

    def get_state(self, model: torch.nn.Module) -> NamedTensors:
        from peft import get_peft_model_state_dict

        return cpu_copies(get_peft_model_state_dict(model))

    def set_state(self, model: torch.nn.Module, state: NamedTensors) -> None:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        check_state_keys(get_peft_model_state_dict(model), state, "adapter state")
        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise ValueError(f"adapter state has unexpected key {result.unexpected_keys[0]!r}")

    def save(self, model: torch.nn.Module, state: NamedTensors, folder: Path) -> None:
        self.set_state(model, state)
        model.save_pretrained(folder)  # type: ignore[operator]


def lora_peft_config(lora: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


@MODES.register("lora")
class LoraMode(AdapterMode):
    """LoRA (Hu et al., 2021): ``W x + (alpha / r) · B A x`` with trained ``A`` (r×in) and ``B`` (out×r)."""

    per_example_gradients = True

    sections = ("lora",)

    def peft_config(self) -> Any:
        return lora_peft_config(self.config.lora)

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


@MODES.register("qlora")
class QloraMode(AdapterMode):
    """QLoRA (Dettmers et al., 2023): LoRA (``training.lora``) on a frozen base quantized to 4-bit NormalFloat
    by bitsandbytes (``training.qlora``); the adapters, as in LoRA, are all that is trained and exchanged."""

    sections = ("lora", "qlora")

    def load_base(self, *, seed: int, vocab_size: int) -> torch.nn.Module:
        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "training.mode qlora needs a CUDA GPU and the bitsandbytes package (`pip install bitsandbytes`); "
                "use mode lora where there is none"
            )
        from transformers import BitsAndBytesConfig

        q = self.config.qlora
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
        )
        return load_model(self.model_config, seed=seed, vocab_size=vocab_size, quantization=quantization)

    def prepare(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and lets gradients reach the adapters through the frozen 4-bit layers.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().prepare(model, seed)

    def place(self, model: torch.nn.Module, device: torch.device) -> None:
        """Nothing to move: bitsandbytes put the 4-bit weights on the GPU while loading."""

    def peft_config(self) -> Any:
        return lora_peft_config(self.config.lora)


@MODES.register("ia3")
class Ia3Mode(AdapterMode):
    """IA3 (Liu et al., 2022): trained vectors ``l`` rescale activations, ``l ⊙ (W x)`` for attention keys and
    values and ``W (l ⊙ x)`` for feed-forward layers; only the vectors are exchanged."""

    sections = ("ia3",)

    def peft_config(self) -> Any:
        from peft import IA3Config

        ia3 = self.config.ia3
        return IA3Config(
            target_modules=list(ia3.target_modules),
            feedforward_modules=list(ia3.feedforward_modules),
            task_type="CAUSAL_LM",
        )
