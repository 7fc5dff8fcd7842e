"""Checkpoints: after every completed round, the global state (also in PEFT format) and the server's state.

A crash costs at most the round in flight: ``latest`` is replaced atomically only after a checkpoint is whole.
A saved PEFT adapter records as ``base_model_name_or_path`` a local folder holding exactly the run's base, so
``AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`` loads it offline.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mpctf.messages import NamedTensors
from mpctf.model.bundle import ModelBundle


@dataclass
class Checkpoint:
    round: int
    global_state: NamedTensors
    strategy_state: dict[str, Any]
    #: The privacy ledger and adaptive clip norm (``None`` when client DP and hidden aggregation are off).
    privacy_state: dict[str, Any] | None = None
    #: The round's metrics record (scores, cumulative bytes), so a resume can restore the byte counters and
    #: write the record if the server died between saving the checkpoint and logging the round.
    record: dict[str, Any] | None = None


def round_dir(run_dir: Path, round_num: int) -> Path:
    return run_dir / "checkpoints" / f"round-{round_num:04d}"


def save_checkpoint(
    run_dir: Path,
    ckpt: Checkpoint,
    bundle: ModelBundle,
    *,
    model_state: NamedTensors | None = None,
    merged_into_base: NamedTensors | None = None,
) -> Path:
    """Write the round's checkpoint, then point ``checkpoints/latest.json`` at it.

    ``model_state`` is what the exported adapter holds when the global state is not model-shaped (a strategy
    that merges into the base); ``merged_into_base`` (``module path -> ΔW``, saved as ``merged_into_base.pt``)
    is then what was added to each module's base weight, so the trained model is the base plus those plus the
    adapter."""
    folder = round_dir(run_dir, ckpt.round)
    folder.mkdir(parents=True, exist_ok=True)
    _record_base(bundle, run_dir)
    bundle.mode.save(
        bundle.model, ckpt.global_state if model_state is None else model_state, folder / "adapter"
    )
    if merged_into_base is not None:
        torch.save(merged_into_base, folder / "merged_into_base.pt")
    tmp = folder / "server_state.pt.tmp"
    torch.save(
        {
            "round": ckpt.round,
            "global_state": ckpt.global_state,
            "strategy": ckpt.strategy_state,
            "privacy": ckpt.privacy_state,
            "record": ckpt.record,
        },
        tmp,
    )
    os.replace(tmp, folder / "server_state.pt")
    pointer = run_dir / "checkpoints" / "latest.json"
    pointer_tmp = pointer.with_suffix(".json.tmp")
    pointer_tmp.write_text(json.dumps({"round": ckpt.round, "path": folder.name}))
    os.replace(pointer_tmp, pointer)
    return folder


def _record_base(bundle: ModelBundle, run_dir: Path) -> None:
    """Point the PEFT config(s) the adapter is saved with at the base's local folder (PEFT would record the
    base's own name: none for a model built in memory, the uncut folder for a cut one)."""
    from peft import PeftModel

    if isinstance(bundle.model, PeftModel):
        base = bundle.base_folder(run_dir)
        for peft_config in bundle.model.peft_config.values():
            peft_config.base_model_name_or_path = base


def latest_round(run_dir: Path) -> int | None:
    """The round ``checkpoints/latest.json`` points at, or ``None`` when the run has no checkpoint yet."""
    pointer = run_dir / "checkpoints" / "latest.json"
    return int(json.loads(pointer.read_text())["round"]) if pointer.is_file() else None


def checkpoint_rounds(run_dir: Path) -> list[int]:
    """The rounds with a checkpoint folder, in order."""
    names = (p.name for p in (run_dir / "checkpoints").glob("round-*") if p.is_dir())
    return sorted(int(n.removeprefix("round-")) for n in names if n.removeprefix("round-").isdigit())


def load_latest(run_dir: Path) -> Checkpoint | None:
    """The last completed round's checkpoint, or ``None`` when the run has none yet."""
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    folder = run_dir / "checkpoints" / json.loads(pointer.read_text())["path"]
    data = torch.load(folder / "server_state.pt", weights_only=False)
    return Checkpoint(
        round=int(data["round"]),
        global_state=data["global_state"],
        strategy_state=data["strategy"],
        privacy_state=data.get("privacy"),
        record=data.get("record"),
    )
