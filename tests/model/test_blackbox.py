"""Black-box prompt tuning: the prompt is an affine image of z, the same at every process of a run; the party
searches z by CMA-ES through the one forward call; a federation learns with a few hundred bytes a round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import mpctf
from mpctf.config import BlackBoxPromptConfig, load_config
from mpctf.data.task_base import Example
from mpctf.errors import ConfigError
from mpctf.model.bundle import ModelBundle
from mpctf.party.blackbox import train_round_blackbox
from mpctf.party.trainer import TrainSettings
from support import tiny_config_dict

SECTION = {"dim": 40, "num_virtual_tokens": 3, "generations": 3, "popsize": 4}


def blackbox_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    cfg = tiny_config_dict(tmp_path, **{"training.mode": "blackbox_prompt", **overrides})
    del cfg["training"]["lora"]
    cfg["training"]["blackbox_prompt"] = dict(SECTION)
    return cfg


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[ModelBundle, ModelBundle]:
    cfg = load_config(blackbox_config(tmp_path_factory.mktemp("blackbox")))
    return ModelBundle.load(cfg), ModelBundle.load(cfg)


def test_the_prompt_is_affine_in_z_and_the_same_in_every_process(bundles) -> None:
    one, two = bundles
    mode = one.mode
    z1, z2 = torch.randn(40), torch.randn(40)
    base = mode.prompt(torch.zeros(40))
    torch.testing.assert_close(
        mode.prompt(z1 + z2) - base, (mode.prompt(z1) - base) + (mode.prompt(z2) - base)
    )
    # Another process of the same run (same seed) draws the same start and the same projection.
    torch.testing.assert_close(two.mode.prompt(z1), mode.prompt(z1))
    assert mode.get_state(one.model)["z"].shape == (40,) and not mode.trainable_parameters(one.model)
    assert not any(p.requires_grad for p in one.model.parameters())


def test_state_round_trips_into_the_virtual_tokens_and_refuses_a_wrong_size(bundles, tmp_path: Path) -> None:
    bundle = bundles[0]
    mode, z = bundle.mode, torch.randn(40)
    start = mode.get_state(bundle.model)
    try:
        mode.set_state(bundle.model, {"z": z})
        torch.testing.assert_close(mode.get_state(bundle.model)["z"], z)
        mode.save(bundle.model, {"z": z}, tmp_path / "adapter")
        # A PEFT prompt-tuning adapter holding P(z): loadable without MPCTF.
        saved = load_file(tmp_path / "adapter/adapter_model.safetensors")
        torch.testing.assert_close(saved["prompt_embeddings"].float(), mode.prompt(z))
        assert (
            json.loads((tmp_path / "adapter/adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
        )
        with pytest.raises(ValueError, match="'z' has 39 values, the model's has 40"):
            mode.set_state(bundle.model, {"z": torch.zeros(39)})
        with pytest.raises(ValueError, match="lacks"):
            mode.set_state(bundle.model, {"w": z})
    finally:
        mode.set_state(bundle.model, start)


class QuadraticModel:
    """A stand-in for the model call: the 'loss' of a prompt is its squared distance to a target prompt."""

    def __init__(self, target: torch.Tensor) -> None:
        self.target, self.calls = target, 0

    def answer_nll(self, prompt: torch.Tensor, examples: list[Example]) -> list[tuple[float, int]]:
        self.calls += 1
        return [(float(((prompt - self.target) ** 2).sum()), 1) for _ in examples]


def test_a_round_of_cma_es_moves_z_towards_a_lower_loss_with_forward_calls_only(bundles) -> None:
    bundle = bundles[0]
    mode = bundle.mode
    start = mode.get_state(bundle.model)
    target = mode.prompt(torch.full((40,), 2.0))
    model = QuadraticModel(target)
    examples = [Example([1, 2, 3], 2)] * 10
    settings = TrainSettings(lr=1.0, weight_decay=0.0, micro_batch=4, grad_accum=1, max_steps=None, seed=3)
    params = BlackBoxPromptConfig(dim=40, num_virtual_tokens=3, generations=30, popsize=8, sigma=0.5)
    try:
        before = model.answer_nll(mode.prompt(start["z"]), examples[:1])[0][0]
        stats = train_round_blackbox(bundle, None, examples, settings, params, model=model)  # type: ignore[arg-type]
        after = model.answer_nll(mode.prompt(mode.get_state(bundle.model)["z"]), examples[:1])[0][0]
    finally:
        mode.set_state(bundle.model, start)
    assert model.calls == 30 * 8 + 2  # popsize candidates a generation, and the two checks here
    assert after < 0.5 * before
    assert (stats.steps, stats.samples) == (30, 10)


def test_a_federation_learns_with_a_few_hundred_bytes_a_round_and_resumes(tmp_path: Path) -> None:
    cfg = blackbox_config(tmp_path, **{"federation.rounds": 2})
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    rounds = result.rounds
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    per_party_round = rounds[-1]["cumulative_bytes_up"] / (2 * 2)
    assert per_party_round < 40 * 4 + 512  # z's 40 floats and the message's header
    assert (tmp_path / "run/checkpoints/round-0002/adapter/adapter_model.safetensors").is_file()
    # Stopped after round 1 and resumed: the same z as the uninterrupted run (CMA-ES restarts each round).
    mpctf.run(blackbox_config(tmp_path, **{"federation.rounds": 1}), run_dir=tmp_path / "cut")
    mpctf.run(cfg, run_dir=tmp_path / "cut", resume=True)
    whole, resumed = (
        torch.load(tmp_path / f"{d}/checkpoints/round-0002/server_state.pt") for d in ("run", "cut")
    )
    assert torch.equal(whole["global_state"]["z"], resumed["global_state"]["z"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"federation.strategy": {"name": "fedprox", "mu": 0.1}}, "acts on the parties' gradient steps"),
        (
            {"training.processes_per_party": 2, "backend.name": "processes"},
            "scores its candidates in one process",
        ),
        (
            {"privacy": {"sample_dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}},
            "per-example gradients",
        ),
    ],
)
def test_what_needs_gradients_is_refused_in_one_line(tmp_path: Path, overrides, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(blackbox_config(tmp_path, **overrides))
    assert message in str(info.value) and "\n" not in str(info.value)
