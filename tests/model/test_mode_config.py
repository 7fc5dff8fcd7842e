"""Validation of the training-mode and model keys: one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpctf.config import load_config
from mpctf.errors import ConfigError
from support import tiny_config_dict


def errors(cfg: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    return str(info.value).splitlines()


def test_unknown_mode_lists_the_known_ones(tmp_path: Path) -> None:
    (line,) = errors(tiny_config_dict(tmp_path, **{"training.mode": "lorax"}))
    assert line.startswith(
        "config key `training`: `mode`: unknown training mode 'lorax'; known: blackbox_prompt, full, ia3, lora"
    )


def test_section_of_another_mode_is_rejected(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.mode": "full"})
    (line,) = errors(cfg)
    assert line == "config key `training`: `lora` only applies to mode lora or qlora, but `mode` is 'full'"


def test_prompt_tuning_section_with_lora_mode(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.prompt_tuning": {"num_virtual_tokens": 8}})
    (line,) = errors(cfg)
    assert "`prompt_tuning` only applies to mode prompt_tuning, but `mode` is 'lora'" in line


def test_num_virtual_tokens_must_be_positive(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.mode": "prompt_tuning"})
    del cfg["training"]["lora"]
    cfg["training"]["prompt_tuning"] = {"num_virtual_tokens": 0}
    (line,) = errors(cfg)
    assert line == (
        "config key `training.prompt_tuning.num_virtual_tokens`: Input should be greater than or equal to 1 (got 0)"
    )


def test_ia3_feedforward_modules_must_be_targets(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.mode": "ia3"})
    del cfg["training"]["lora"]
    cfg["training"]["ia3"] = {"target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]}
    (line,) = errors(cfg)
    assert line.endswith("`feedforward_modules` must be a subset of `target_modules`; down_proj is not")


def test_architecture_heads_must_divide(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.mode": "pretrain"})
    del cfg["training"]["lora"]
    cfg["training"]["pretrain"] = {"architecture": {"hidden_size": 100, "num_attention_heads": 8}}
    (line,) = errors(cfg)
    assert "`hidden_size` 100 must be divisible by `num_attention_heads` 8" in line


def test_p_tuning_encoder_is_a_closed_choice(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"training.mode": "p_tuning"})
    del cfg["training"]["lora"]
    cfg["training"]["p_tuning"] = {"encoder": "gru"}
    (line,) = errors(cfg)
    assert line.startswith("config key `training.p_tuning.encoder`: Input should be 'mlp' or 'lstm'")


def test_num_layers_must_be_positive(tmp_path: Path) -> None:
    (line,) = errors(tiny_config_dict(tmp_path, **{"model.num_layers": 0}))
    assert line.startswith("config key `model.num_layers`: Input should be greater than or equal to 1")
