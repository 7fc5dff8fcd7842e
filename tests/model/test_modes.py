"""Contract matrix: every registered training mode through the same checks on the tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mpctf.config import load_config
from mpctf.data.task_base import IGNORE, Example, scored_logits, token_logits
from mpctf.data.tasks import make_task
from mpctf.errors import ConfigError
from mpctf.model.bundle import ModelBundle
from mpctf.model.modes import MODES
from support import tiny_config_dict

#: Gradient-trained modes that run on this machine (qlora needs CUDA and bitsandbytes); the forward-only
#: blackbox_prompt has its own contract (tests/model/test_blackbox.py).
CPU_MODES = [
    m for m in MODES.names() if (m != "qlora" or torch.cuda.is_available()) and not MODES.get(m).forward_only
]


def mode_config(tmp_path: Path, mode: str, **training: Any) -> dict[str, Any]:
    """The tiny federation with ``training.mode`` set (and the LoRA section only where the mode reads it)."""
    cfg = tiny_config_dict(tmp_path, **{"training.mode": mode})
    if "lora" not in MODES.get(mode).sections:
        del cfg["training"]["lora"]
    cfg["training"].update(training)
    return cfg


_BUNDLES: dict[str, ModelBundle] = {}


def bundle_for(tmp_path: Path, mode: str) -> ModelBundle:
    if mode not in _BUNDLES:
        overrides = {"prompt_tuning": {"num_virtual_tokens": 4}, "prefix_tuning": {"num_virtual_tokens": 4}}
        cfg = mode_config(tmp_path, mode, **({mode: overrides[mode]} if mode in overrides else {}))
        _BUNDLES[mode] = ModelBundle.load(load_config(cfg))
    return _BUNDLES[mode]


def batch_of(bundle: ModelBundle, tmp_path: Path):
    task = make_task(load_config(tiny_config_dict(tmp_path)), bundle.tokenizer)
    examples = [
        Example(input_ids=[5, 6, 7, 8, 9], prompt_len=3),
        Example(input_ids=[10, 11, 12], prompt_len=1),
    ]
    return task, task.collate(examples)


def perturbed(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in state.items()}


@pytest.mark.parametrize("mode", CPU_MODES)
def test_state_is_exactly_the_trainable_parameters(tmp_path: Path, mode: str) -> None:
    bundle = bundle_for(tmp_path, mode)
    state = bundle.mode.get_state(bundle.model)
    trainable = bundle.mode.trainable_parameters(bundle.model)
    assert state and set(state) == set(trainable)
    assert all(state[k].shape == p.shape and state[k].device.type == "cpu" for k, p in trainable.items())
    live = {id(p) for p in bundle.model.parameters() if p.requires_grad}
    assert live == {id(p) for p in trainable.values()}


@pytest.mark.parametrize("mode", CPU_MODES)
def test_set_state_round_trips(tmp_path: Path, mode: str) -> None:
    bundle = bundle_for(tmp_path, mode)
    original = bundle.mode.get_state(bundle.model)
    changed = perturbed(original)
    bundle.mode.set_state(bundle.model, changed)
    got = bundle.mode.get_state(bundle.model)
    assert all(torch.equal(got[k], changed[k]) for k in changed)
    bundle.mode.set_state(bundle.model, original)


@pytest.mark.parametrize("mode", CPU_MODES)
def test_set_state_names_missing_unexpected_and_misshapen_keys(tmp_path: Path, mode: str) -> None:
    bundle = bundle_for(tmp_path, mode)
    state = bundle.mode.get_state(bundle.model)
    first = sorted(state)[0]
    with pytest.raises(ValueError, match="lacks 1 tensor"):
        bundle.mode.set_state(bundle.model, {k: v for k, v in state.items() if k != first})
    with pytest.raises(ValueError, match=r"unexpected key 'stray\.weight'"):
        bundle.mode.set_state(bundle.model, {**state, "stray.weight": torch.zeros(1)})
    if mode not in ("lora", "ia3"):  # PEFT's own loader reports shapes for adapters, in its own words
        with pytest.raises(ValueError, match="shape"):
            bundle.mode.set_state(bundle.model, {**state, first: torch.zeros(3, 1)})


@pytest.mark.parametrize("mode", CPU_MODES)
def test_gradients_reach_only_the_exchanged_state(tmp_path: Path, mode: str) -> None:
    bundle = bundle_for(tmp_path, mode)
    task, batch = batch_of(bundle, tmp_path)
    bundle.model.zero_grad(set_to_none=True)
    task.loss(bundle.model, batch).backward()
    trainable = bundle.mode.trainable_parameters(bundle.model)
    ids = {id(p) for p in trainable.values()}
    with_grad = [n for n, p in bundle.model.named_parameters() if p.grad is not None]
    assert with_grad and all(id(p) in ids for p in bundle.model.parameters() if p.grad is not None)
    assert any(float(p.grad.abs().sum()) > 0 for p in trainable.values() if p.grad is not None)
    bundle.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("mode", CPU_MODES)
def test_saved_state_reloads_with_its_library(tmp_path: Path, mode: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bundle = bundle_for(tmp_path, mode)
    original = bundle.mode.get_state(bundle.model)
    bundle.mode.save(bundle.model, perturbed(original, seed=2), tmp_path / "saved")
    _, batch = batch_of(bundle, tmp_path)
    bundle.model.eval()
    with torch.no_grad():
        expected = token_logits(bundle.model, batch)
        if (tmp_path / "saved" / "adapter_config.json").is_file():
            base = bundle.mode.load_base(seed=0, vocab_size=len(bundle.tokenizer))
            reloaded = PeftModel.from_pretrained(base, tmp_path / "saved")
        else:
            reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
        got = token_logits(reloaded.eval(), batch)
    bundle.mode.set_state(bundle.model, original)
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("mode", CPU_MODES)
def test_scored_logits_are_the_full_logits_at_the_positions_that_predict_labels(
    tmp_path: Path, mode: str
) -> None:
    bundle = bundle_for(tmp_path, mode)
    _, batch = batch_of(bundle, tmp_path)  # prompts of 3 and 1 tokens: position 0 predicts a labelled token
    task = make_task(load_config(tiny_config_dict(tmp_path)), bundle.tokenizer)
    # Answers at 2 and at 4-5 of a width-6 batch: positions 0 and 2 predict nothing in either row.
    gapped = task.collate([Example([5, 6, 7], prompt_len=2), Example([10, 11, 12, 13, 14, 15], prompt_len=4)])
    bundle.model.eval()
    with torch.no_grad():
        for b, expected in ((batch, None), (gapped, [1, 3, 4])):
            full = token_logits(bundle.model, b)
            logits, targets, positions = scored_logits(bundle.model, b)
            if expected is not None:
                assert positions.tolist() == expected
            predicts = [t for t in range(b.input_ids.size(1) - 1) if (b.labels[:, t + 1] != IGNORE).any()]
            assert positions.tolist() == predicts
            assert logits.shape == (2, len(predicts), full.size(-1))
            assert torch.equal(targets, b.labels[:, positions + 1])
            assert torch.allclose(logits, full[:, positions], atol=1e-5)


def test_every_mode_is_registered() -> None:
    assert MODES.names() == [
        "blackbox_prompt",
        "full",
        "ia3",
        "lora",
        "p_tuning",
        "prefix_tuning",
        "pretrain",
        "prompt_tuning",
        "qlora",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_qlora_without_cuda_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ModelBundle.load(load_config(mode_config(tmp_path, "qlora")))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("training.mode qlora needs a CUDA GPU and the bitsandbytes package")


def test_prompt_tuning_text_init_starts_from_the_text_embeddings(tmp_path: Path) -> None:
    cfg = mode_config(
        tmp_path, "prompt_tuning", prompt_tuning={"num_virtual_tokens": 3, "init_text": "Answer:"}
    )
    bundle = ModelBundle.load(load_config(cfg))
    ids = bundle.tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    words = bundle.model.get_input_embeddings().weight
    expected = words[(ids * 3)[:3]]
    (state,) = bundle.mode.get_state(bundle.model).values()
    assert torch.allclose(state, expected.detach())


def test_pretrain_from_scratch_builds_the_configured_architecture(tmp_path: Path) -> None:
    arch = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}
    cfg = mode_config(tmp_path, "pretrain", pretrain={"from_scratch": True, "architecture": arch})
    bundle = ModelBundle.load(load_config(cfg))
    config = bundle.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 3, len(bundle.tokenizer))
    assert len(bundle.model.model.layers) == 3


def test_pretrain_from_scratch_refuses_num_layers(tmp_path: Path) -> None:
    cfg = mode_config(tmp_path, "pretrain")
    cfg["model"]["num_layers"] = 1
    with pytest.raises(ConfigError, match=r"model\.num_layers"):
        ModelBundle.load(load_config(cfg))


def test_bad_target_module_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    cfg = mode_config(tmp_path, "ia3", ia3={"target_modules": ["nope"], "feedforward_modules": []})
    with pytest.raises(ConfigError, match=r"^config key `training.ia3.target_modules`"):
        ModelBundle.load(load_config(cfg))
