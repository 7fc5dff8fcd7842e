"""A usable model at the end of a run: adapters that load offline with AutoPeftModelForCausalLM, and
`mpctf export` writing a model folder that transformers loads without MPCTF.

One real tiny run (module fixture) serves the adapter and export tests; the other training modes and the merged
base are checked on checkpoints written by the server's own `save_checkpoint` from a perturbed state, which
needs no training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import mpctf
from mpctf.cli import app
from mpctf.config import dump_config, load_config
from mpctf.export import export_model
from mpctf.model.bundle import ModelBundle
from mpctf.model.loading import load_model
from mpctf.server.checkpoint import Checkpoint, load_latest, save_checkpoint
from support import tiny_config_dict

runner = CliRunner()
IDS = torch.tensor([[1, 523, 2048, 77, 9, 301, 4000, 12]])

# Loads the folder as a user would, with MPCTF unimportable: the export must stand on its own.
STANDALONE = """
import importlib.abc, sys

class NoMpctf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mpctf":
            raise ImportError("the exported model must not need mpctf")

sys.meta_path.insert(0, NoMpctf())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

folder, expected = sys.argv[1], torch.load(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
logits = model(input_ids=expected["ids"]).logits
gap = (logits - expected["logits"]).abs().max().item()
assert gap < 1e-4, gap
generate = pipeline("text-generation", model=folder)
text = generate("Movie review: a delight.", max_new_tokens=4, do_sample=False)[0]["generated_text"]
assert text.startswith("Movie review: a delight."), text
assert tokenizer("hello").input_ids
assert not [m for m in sys.modules if m.split(".")[0] == "mpctf"]
print("standalone ok")
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    cfg = tiny_config_dict(tmp, **{"data.eval.before_training": False, "training.local_steps": 2})
    mpctf.run(cfg, run_dir=tmp / "run")
    return tmp / "run"


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def _run_model(run_dir: Path) -> torch.nn.Module:
    """The server's model at the run's last checkpoint, rebuilt the way the run built it."""
    bundle = ModelBundle.load(load_config(run_dir / "config.yaml"))
    ckpt = load_latest(run_dir)
    assert ckpt is not None
    bundle.mode.set_state(bundle.model, ckpt.global_state)
    return bundle.model.eval()


def test_adapter_names_a_local_base_and_loads_offline_with_autopeft(tiny_run: Path) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    adapter = tiny_run / "checkpoints/round-0002/adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base and (Path(base) / "config.json").is_file() and (Path(base) / "tokenizer.json").is_file()
    # The recorded base is the very base the run drew from its seed, weight for weight.
    cfg = load_config(tiny_run / "config.yaml")
    fresh = load_model(cfg.model, seed=cfg.seed, vocab_size=49152).state_dict()
    saved = AutoModelForCausalLM.from_pretrained(base).state_dict()
    assert saved.keys() == fresh.keys() and all(torch.equal(saved[k], fresh[k]) for k in fresh)
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    assert torch.allclose(_logits(loaded), _logits(_run_model(tiny_run)), atol=1e-6)


def test_export_loads_without_mpctf_and_matches_the_run(tiny_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tiny_run), str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    assert "merged adapter, round 2" in result.output
    torch.save({"ids": IDS, "logits": _logits(_run_model(tiny_run))}, tmp_path / "expected.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, str(tmp_path / "model"), str(tmp_path / "expected.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "standalone ok" in done.stdout, done.stderr[-3000:]


def test_round_option_picks_that_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    first = export_model(tiny_run, tmp_path / "r1", round_num=1)
    last = export_model(tiny_run, tmp_path / "r2")
    assert (first.round, last.round) == (1, 2)
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("r1", "r2"))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[key], b[key])


def _saved_checkpoint(tmp_path: Path, training: dict[str, Any]) -> tuple[Path, ModelBundle]:
    """A run directory whose round-1 checkpoint the server's `save_checkpoint` wrote from a perturbed state."""
    cfg_dict = tiny_config_dict(tmp_path)
    cfg_dict["training"].pop("lora")
    cfg_dict["training"].update(training)
    cfg = load_config(cfg_dict)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    bundle = ModelBundle.load(cfg)
    gen = torch.Generator().manual_seed(1)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=gen)
        for k, v in bundle.mode.get_state(bundle.model).items()
    }
    save_checkpoint(run_dir, Checkpoint(1, state, {}), bundle)
    return run_dir, bundle


@pytest.mark.parametrize(
    "training",
    [
        {"mode": "full"},
        {
            "mode": "ia3",
            "ia3": {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        },
    ],
    ids=["full", "ia3"],
)
def test_other_modes_export_the_trained_model(tmp_path: Path, training: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    run_dir, bundle = _saved_checkpoint(tmp_path, training)
    done = export_model(run_dir, tmp_path / "model")
    assert done.kind == ("full model" if training["mode"] == "full" else "merged adapter")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert torch.allclose(_logits(exported), _logits(bundle.model.eval()), atol=1e-5)


def test_factors_merged_into_the_base_during_the_run_are_exported(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    run_dir, bundle = _saved_checkpoint(tmp_path, {"lora": {"r": 2, "target_modules": ["q_proj"]}})
    module = "base_model.model.model.layers.1.self_attn.q_proj"
    delta = 0.1 * torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    torch.save({module: delta}, run_dir / "checkpoints/round-0001/merged_into_base.pt")
    with torch.no_grad():  # what the server's merged base held at that checkpoint
        bundle.model.get_submodule(module).base_layer.weight.add_(delta)
    export_model(run_dir, tmp_path / "model")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert torch.allclose(_logits(exported), _logits(bundle.model.eval()), atol=1e-5)


def _error(args: list[str], code: int, *phrases: str) -> None:
    result = runner.invoke(app, ["export", *args])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(p in lines[0] for p in phrases), lines[0]


def test_prompt_learning_loads_with_autopeft_but_cannot_be_merged(tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    run_dir, bundle = _saved_checkpoint(
        tmp_path, {"mode": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 2}}
    )
    adapter = AutoPeftModelForCausalLM.from_pretrained(run_dir / "checkpoints/round-0001/adapter").eval()
    assert torch.allclose(_logits(adapter), _logits(bundle.model.eval()), atol=1e-6)
    _error([str(run_dir), str(tmp_path / "m")], 2, "prompt_tuning", "AutoPeftModelForCausalLM")
    assert not (tmp_path / "m").exists()


def test_bad_inputs_are_one_line_errors(tiny_run: Path, tmp_path: Path) -> None:
    _error([str(tmp_path / "nope"), str(tmp_path / "m")], 2, "not a run directory", "not found")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    _error([str(bare), str(tmp_path / "m")], 2, "no checkpoint yet")
    _error([str(tiny_run), "--round", "7", str(tmp_path / "m")], 2, "--round 7", "rounds 1 to 2")
    (tmp_path / "file").write_text("x")
    _error([str(tiny_run), str(tmp_path / "file/m")], 2, "is a file, not a folder")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    _error([str(tiny_run), str(full)], 2, "not empty", "--force")
    _error([str(tiny_run), str(tiny_run.parent), "--force"], 2, "holds the run directory")
    assert runner.invoke(app, ["export", str(tiny_run), str(full), "--force"]).exit_code == 0
    assert not (full / "keep.txt").exists() and (full / "config.json").is_file()


def test_a_saved_tiny_base_that_differs_from_its_seed_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file, save_file

    from mpctf.config import ModelConfig
    from mpctf.model import loading

    smollm2 = loading.smollm2_folder()  # the tokenizer's source stays where it is (no 20 s conversion)
    monkeypatch.setattr(loading, "smollm2_folder", lambda: smollm2)
    monkeypatch.setenv("MPCTF_CACHE", str(tmp_path / "cache"))
    config = ModelConfig(name="tiny-llama", num_layers=1)
    folder = Path(loading.base_folder(config, seed=3, vocab_size=100, run_dir=tmp_path))
    assert folder.parent == tmp_path / "cache/models" and (folder / "tokenizer.json").is_file()
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.weight"] += 1  # a cache written by another torch whose random draws differ
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setattr(loading, "_VERIFIED", set())
    assert loading.base_folder(config, seed=3, vocab_size=100, run_dir=tmp_path) == str(folder)
    assert loading._holds(folder, load_model(config, seed=3, vocab_size=100))
