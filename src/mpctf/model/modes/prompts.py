"""Prompt learning through PEFT: prompt tuning, prefix tuning and P-tuning. The base model stays frozen; only the
prompt encoder (virtual-token embeddings, and the prefix projection or P-tuning encoder when there is one) is
trained and exchanged.

Why not PEFT's state dict here: for prompt learning ``get_peft_model_state_dict`` holds the encoder's *output*
(the virtual-token embeddings an inference model uses), not the parameters being trained. For P-tuning and a
projected prefix the two differ, and loading the output back into a training model would push it through the
encoder a second time. So the state is the encoder's own parameters, loaded with key and shape checks, and
``save`` goes through PEFT's ``save_pretrained``, which writes the inference embeddings
``PeftModel.from_pretrained`` expects.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch

from mpctf.messages import NamedTensors
from mpctf.model.loading import tokenizer_source
from mpctf.model.modes.base import MODES, TrainingMode, copy_into, cpu_copies


class PromptLearningMode(TrainingMode):
    """Base for PEFT prompt-learning methods: the state is the prompt encoder's parameters."""

    @abstractmethod
    def peft_config(self) -> Any:
        """The PEFT config of the method (``task_type="CAUSAL_LM"``)."""

    def prepare(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        from peft import get_peft_model

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return get_peft_model(model, self.peft_config())

    @staticmethod
    def _encoder(model: torch.nn.Module) -> torch.nn.Module:
        return model.prompt_encoder[model.active_adapter]  # type: ignore[index]

    def trainable_parameters(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return dict(self._encoder(model).named_parameters())

    def get_state(self, model: torch.nn.Module) -> NamedTensors:
        return cpu_copies(dict(self._encoder(model).named_parameters()))

    def set_state(self, model: torch.nn.Module, state: NamedTensors) -> None:
        copy_into(dict(self._encoder(model).named_parameters()), state, "prompt encoder state")

    def save(self, model: torch.nn.Module, state: NamedTensors, folder: Path) -> None:
        self.set_state(model, state)
        model.save_pretrained(folder)  # type: ignore[operator]


@MODES.register("prompt_tuning")
class PromptTuningMode(PromptLearningMode):
    """Prompt tuning (Lester et al., 2021): ``n`` trained embeddings ``P`` are prepended to the input
    embeddings, ``h = LM([P; E(x)])``; ``P`` starts from the embeddings of ``init_text`` or of random
    vocabulary tokens."""

    sections = ("prompt_tuning",)

    def peft_config(self) -> Any:
        from peft import PromptTuningConfig

        pt = self.config.prompt_tuning
        if pt.init_text is None:
            return PromptTuningConfig(
                task_type="CAUSAL_LM",
                num_virtual_tokens=pt.num_virtual_tokens,
                prompt_tuning_init="SAMPLE_VOCAB",
            )
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=pt.num_virtual_tokens,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=pt.init_text,
            tokenizer_name_or_path=tokenizer_source(self.model_config.name),
            tokenizer_kwargs={"local_files_only": True},
        )


@MODES.register("prefix_tuning")
class PrefixTuningMode(PromptLearningMode):
    """Prefix tuning (Li and Liang, 2021): trained key/value vectors for ``n`` virtual positions in every
    attention layer, ``attn(q, [P_k; K], [P_v; V])``; optionally reparametrized as ``P = MLP(P')``."""

    sections = ("prefix_tuning",)

    def peft_config(self) -> Any:
        from peft import PrefixTuningConfig

        pt = self.config.prefix_tuning
        projection = {}
        if pt.projection_hidden_size is not None:
            projection = {"prefix_projection": True, "encoder_hidden_size": pt.projection_hidden_size}
        return PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=pt.num_virtual_tokens, **projection
        )


@MODES.register("p_tuning")
class PTuningMode(PromptLearningMode):
    """P-tuning (Liu et al., 2021, "GPT Understands, Too"): virtual-token embeddings produced by a trained
    encoder, ``P = f(E')`` with ``f`` an MLP or a bidirectional LSTM, prepended to the input embeddings."""

    sections = ("p_tuning",)

    def peft_config(self) -> Any:
        from peft import PromptEncoderConfig

        pt = self.config.p_tuning
        return PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=pt.num_virtual_tokens,
            encoder_reparameterization_type=pt.encoder.upper(),
            encoder_hidden_size=pt.encoder_hidden_size,
            encoder_dropout=pt.encoder_dropout,
        )
