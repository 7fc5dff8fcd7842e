"""A run's result as a standalone Hugging Face model folder, loadable without MPCTF or PEFT.

A checkpoint's ``adapter/`` folder holds either a PEFT adapter (LoRA, QLoRA, IA3, prompt learning) or a whole
model (full fine-tuning, pre-training). An adapter that lives in the layers is merged into the base the run
trained on (``W + ΔW``, with ``merged_into_base.pt`` added first where a strategy folded factors into the base);
a whole model is written again as is. The tokenizer goes with it, so ``AutoModelForCausalLM``,
``AutoTokenizer`` and ``pipeline("text-generation", ...)`` all load the folder. Prompt-learning adapters add
virtual tokens that no weight can hold: they stay loadable with ``AutoPeftModelForCausalLM`` only.

The format of the checkpoint, not the training mode's name, decides what is done.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mpctf.errors import ConfigError, ModelError, StorageError


@dataclass(frozen=True)
class Exported:
    folder: Path
    round: int
    #: What the folder holds: "merged adapter" or "full model".
    kind: str
    #: Why this round: "asked for", "best by federated validation" or "the last checkpoint".
    chosen: str = "asked for"


def export_model(run_dir: Path, out: Path, *, round_num: int | None = None, force: bool = False) -> Exported:
    """Write round ``round_num`` of ``run_dir`` as a model folder at ``out``; by default the best round by
    federated validation (``data.validation``) when the run chose one, else the last checkpoint.

    ``out`` must be new or an empty folder; ``force`` replaces a non-empty one. Nothing is written to ``out``
    until the model is whole (it is built in a sibling folder and renamed)."""
    from mpctf.model.loading import load_tokenizer

    checkpoint, number, chosen = checkpoint_folder(run_dir, round_num)
    check_output(out, run_dir, force=force)
    config = run_config(run_dir / "config.yaml")
    tokenizer = load_tokenizer(config.model.name)
    adapter = checkpoint / "adapter"
    if (adapter / "adapter_config.json").is_file():
        model, kind = _merged(config, adapter, len(tokenizer)), "merged adapter"
    elif (adapter / "config.json").is_file():
        model, kind = _whole(config, adapter), "full model"
    else:
        raise StorageError(f"{adapter}: no adapter_config.json or config.json (an incomplete checkpoint)")
    _set_pad_token(model, tokenizer)
    _write(out, model, tokenizer)
    return Exported(out, number, kind, chosen)


def run_config(path: Path) -> Any:
    """The run's resolved config, without checking that the parties' data files exist: the model needs none,
    and the run may have moved to another machine."""
    from pydantic import ValidationError

    from mpctf.config import RunConfig, load_config
    from mpctf.strict_yaml import load_yaml

    try:
        return RunConfig.model_validate(load_yaml(path))
    except ValidationError:
        return load_config(path)  # raises the ConfigError that names every problem


def best_round(run_dir: Path) -> int | None:
    """The round federated validation chose (the last ``best_round`` in ``metrics.jsonl``), if any."""
    from mpctf.report.metrics import read_metrics

    log = run_dir / "metrics.jsonl"
    records = read_metrics(log) if log.is_file() else []
    chosen = [r["best_round"] for r in records if isinstance(r.get("best_round"), int)]
    return chosen[-1] if chosen else None


def checkpoint_folder(run_dir: Path, round_num: int | None) -> tuple[Path, int, str]:
    """The checkpoint folder of ``round_num`` (default: the best round by federated validation, else the one
    ``latest.json`` names), its round, and why that round."""
    from mpctf.server.checkpoint import checkpoint_rounds, latest_round, round_dir

    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run directory ({'a file' if run_dir.exists() else 'not found'})")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    rounds = checkpoint_rounds(run_dir)
    chosen = "asked for"
    if round_num is None and (best := best_round(run_dir)) in rounds:
        round_num, chosen = best, "best by federated validation"
    elif round_num is None:
        chosen = "the last checkpoint"
        try:
            round_num = latest_round(run_dir)
        except (ValueError, KeyError, TypeError):
            raise StorageError(f"{run_dir / 'checkpoints/latest.json'}: unreadable; pass --round N") from None
        if round_num is None:
            raise ConfigError(f"{run_dir}: no checkpoint yet (no round has completed)")
    elif round_num not in rounds:
        have = f"rounds {rounds[0]} to {rounds[-1]}" if rounds else "no checkpoint yet"
        raise ConfigError(f"--round {round_num}: {run_dir} has no checkpoint of that round ({have})")
    return round_dir(run_dir, round_num), round_num, chosen


def check_output(out: Path, run_dir: Path, *, force: bool) -> None:
    """``ConfigError`` unless ``out`` can become the model folder (new, empty, or non-empty with ``force``)."""
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"OUT: {blocker} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise ConfigError(f"OUT: {out} exists and is not empty (pass --force to replace its contents)")
    resolved = out.resolve()
    for kept, what in ((run_dir.resolve(), "the run directory"), (Path.cwd(), "the current folder")):
        if kept == resolved or resolved in kept.parents:
            raise ConfigError(f"OUT: {out} holds {what}; --force will not replace it")


def _merged(config: Any, adapter: Path, vocab_size: int) -> torch.nn.Module:
    """The run's base with the adapter (and any factors merged into the base during the run) folded in."""
    from peft import PeftConfig, PeftModel

    from mpctf.model.loading import load_model

    if PeftConfig.from_pretrained(adapter).is_prompt_learning:
        raise ConfigError(
            f"training.mode {config.training.mode}: a prompt-learning adapter adds virtual tokens that cannot be "
            f"merged into the weights; load {adapter} with peft's AutoPeftModelForCausalLM instead"
        )
    # Unquantized even for QLoRA: the export is a plain model in the run's dtype.
    base = load_model(config.model, seed=config.seed, vocab_size=vocab_size)
    model = PeftModel.from_pretrained(base, adapter)
    _add_merged_deltas(model, adapter.parent / "merged_into_base.pt")
    return model.merge_and_unload()


@torch.no_grad()
def _add_merged_deltas(model: torch.nn.Module, path: Path) -> None:
    """Add ``merged_into_base.pt`` (``module path -> ΔW``, as the server's model addresses its modules)."""
    if not path.is_file():
        return
    for module_path, delta in torch.load(path, weights_only=True).items():
        try:
            weight = model.get_submodule(module_path).base_layer.weight
        except AttributeError:
            raise ModelError(f"{path}: the model has no adapted module {module_path!r}") from None
        if weight.shape != delta.shape:
            raise ModelError(
                f"{path}: {module_path!r} has shape {tuple(delta.shape)}, the model's is {tuple(weight.shape)}"
            )
        weight.add_(delta.to(weight.dtype))


def _whole(config: Any, folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from mpctf.model.loading import DTYPES

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=DTYPES[config.model.dtype], local_files_only=True
    )


def _set_pad_token(model: Any, tokenizer: Any) -> None:
    """Record the tokenizer's pad token (MPCTF pads with EOS where the tokenizer has none) so that generation
    does not warn about it."""
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = tokenizer.pad_token_id


def _write(out: Path, model: Any, tokenizer: Any) -> None:
    """Save into a sibling folder, then move its files into ``out`` (emptied first; kept itself, since it may be
    the current folder)."""
    target = out.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        if not target.exists():
            partial.rename(target)
            return
        for old in target.iterdir():
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        for new in partial.iterdir():
            new.rename(target / new.name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
