"""Building base models: the first-N-layers cut and random Llamas of a given shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpctf.config import ArchitectureConfig, ModelConfig
from mpctf.errors import ModelError
from mpctf.model.loading import keep_first_layers, load_model, random_llama


def test_num_layers_keeps_the_first_layers_and_reloads(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    full = load_model(ModelConfig(name="tiny-llama"), seed=0, vocab_size=100)
    cut = load_model(ModelConfig(name="tiny-llama", num_layers=1), seed=0, vocab_size=100)
    assert len(cut.model.layers) == 1 and cut.config.num_hidden_layers == 1
    # The kept layer is the original first layer, weight for weight.
    assert torch.equal(cut.model.layers[0].mlp.up_proj.weight, full.model.layers[0].mlp.up_proj.weight)
    cut.save_pretrained(tmp_path / "cut")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "cut")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(again(input_ids=ids).logits, cut(input_ids=ids).logits, atol=1e-5)


def test_num_layers_beyond_the_model_is_a_model_error() -> None:
    model = load_model(ModelConfig(name="tiny-llama"), seed=0, vocab_size=100)
    with pytest.raises(ModelError, match=r"model\.num_layers=3 exceeds the model's 2 layers"):
        keep_first_layers(model, 3)


def test_random_llama_is_seeded() -> None:
    shape = ArchitectureConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    a, b = (random_llama(shape, vocab_size=50, seed=3) for _ in range(2))
    c = random_llama(shape, vocab_size=50, seed=4)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert wa.shape == (50, 16)
