"""Helpers shared by tests: small federations that run in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_config_dict(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A 2-party federation on a 240-row sample of Rotten Tomatoes with the random 2-layer tiny model."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "tiny-llama"},
        "training": {
            "batch_size": 4,
            "lr": 5e-3,
            "max_length": 64,
            "local_steps": 3,
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        },
        "task": {
            "prompt": "Movie review: {text}\nIs this review positive or negative? Answer:",
            "text_field": "text",
            "label_field": "category",
            "labels": {"fresh": " positive", "rotten": " negative"},
        },
        "data": {
            "dataset": {"builtin": "rotten_tomatoes", "max_samples": 240},
            "split": {"name": "iid"},
            "partition": {"name": "fixed_size", "size": 12},
            "eval": {"test_fraction": 0.2, "max_samples": 40, "batch_size": 20},
        },
        "parties": [{"name": "alice"}, {"name": "bob"}],
        "federation": {"rounds": 2, "strategy": {"name": "fedavg"}},
        "backend": {"name": "local"},
    }
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


def tiny_party(folder: Path, rows: int) -> tuple[Any, Any, list[Any]]:
    """``(bundle, task, examples)``: the tiny model loaded as alice's, and her first ``rows`` examples."""
    from mpctf.config import load_config
    from mpctf.data.federated import FederatedData
    from mpctf.data.tasks import make_task
    from mpctf.model.bundle import ModelBundle

    cfg = load_config(tiny_config_dict(folder))
    bundle = ModelBundle.load(cfg)
    task = make_task(cfg, bundle.tokenizer)
    return bundle, task, task.encode_all(FederatedData(cfg).party_rows("alice"), "alice")[:rows]
