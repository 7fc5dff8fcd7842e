"""Every training mode on one small federation: bytes exchanged per round, time per step, metric before and after.

    python benchmarks/modes.py [--rounds 2] [--steps 4] [--out docs/training-modes-results.md]

Two parties, local backend, SmolLM2-135M-Instruct cut to its first ``--layers`` decoder layers (real embeddings,
so prompts and verbalizers mean something), Rotten Tomatoes reviews split by movie, accuracy on held-out movies.
``pretrain`` trains a small random Llama (2 layers, d=128) on Jane Austen's novels (one per party) and reports
perplexity on held-out paragraphs. ``qlora`` needs a CUDA GPU and bitsandbytes and is skipped without them.
Each mode uses a learning rate in the range its paper recommends (adapters and prompts take much larger steps
than full fine-tuning). Bytes are what crossed the wire per party and round (float32 tensors plus the message
header); time per step is the parties' training time divided by their optimizer steps.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _harness import MOVIE_TASK

import mpctf
from mpctf.report.metrics import read_metrics

#: mode → (learning rate, extra `training` keys).
MODES: dict[str, tuple[float, dict[str, Any]]] = {
    "lora": (2e-3, {"lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}}),
    "qlora": (2e-3, {"lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}}),
    "ia3": (5e-2, {}),
    "prompt_tuning": (
        3e-2,
        {"prompt_tuning": {"num_virtual_tokens": 16, "init_text": "Is this review positive?"}},
    ),
    "prefix_tuning": (1e-2, {"prefix_tuning": {"num_virtual_tokens": 16}}),
    "p_tuning": (1e-2, {"p_tuning": {"num_virtual_tokens": 16}}),
    "full": (3e-5, {}),
    "pretrain": (3e-3, {}),
}


def config(mode: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    lr, extra = MODES[mode]
    training = {"mode": mode, "batch_size": 8, "lr": lr, "max_length": 64, "local_steps": args.steps, **extra}
    cfg: dict[str, Any] = {
        "name": f"modes-{mode}",
        "seed": 0,
        "output_dir": str(out),
        "model": {"name": "smollm2-135m-instruct", "num_layers": args.layers},
        "training": training,
        "task": copy.deepcopy(MOVIE_TASK),
        "data": {
            "dataset": {"builtin": "rotten_tomatoes", "max_samples": 2000},
            "split": {"name": "by_key", "key": "movie_name"},
            "partition": {"name": "fixed_size", "size": 8 * args.steps},
            "eval": {"test_fraction": 0.1, "group_by": "movie_name", "max_samples": 200, "batch_size": 50},
        },
        "parties": [{"name": "alice"}, {"name": "bob"}],
        "federation": {"rounds": args.rounds, "strategy": {"name": "fedavg"}},
        "backend": {"name": "local"},
    }
    if mode == "pretrain":
        training["pretrain"] = {
            "from_scratch": True,
            "architecture": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2},
        }
        del cfg["model"]["num_layers"]
        cfg["task"] = {"type": "causal_lm", "text_field": "text"}
        cfg["data"] = {
            "dataset": {"builtin": "austen", "where": {"book": ["Emma", "Persuasion"]}},
            "split": {"name": "by_key", "key": "book"},
            "partition": {"name": "fixed_size", "size": 8 * args.steps},
            "eval": {"test_fraction": 0.05, "max_samples": 100, "batch_size": 50},
        }
    return cfg


def measure(mode: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run_dir = out / mode
    began = time.perf_counter()
    result = mpctf.run(config(mode, args, out), run_dir=run_dir)
    wall = time.perf_counter() - began
    parties = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "party_round"]
    metric = "perplexity" if mode == "pretrain" else "accuracy"
    return {
        "mode": mode,
        "bytes_up": statistics.mean(r["bytes_up"] for r in parties),
        "bytes_down": statistics.mean(r["bytes_down"] for r in parties),
        "step_s": sum(r["train_seconds"] for r in parties) / sum(r["steps"] for r in parties),
        "metric": metric,
        "before": result.rounds[0][metric],
        "after": result.rounds[-1][metric],
        "loss_before": result.rounds[0]["eval_loss"],
        "loss_after": result.rounds[-1]["eval_loss"],
        "wall_s": wall,
    }


def full_model_sizes(modes: list[str]) -> str:
    """The bytes each mode exchanges per party and direction on the whole SmolLM2-135M-Instruct (float32),
    read from the trainable state the mode builds; no training."""
    from mpctf.config import load_config
    from mpctf.model.bundle import ModelBundle

    lines = ["| mode | tensors exchanged | float32 bytes per round and direction |", "|---|---|---|"]
    for mode in modes:
        if mode in ("qlora", "pretrain"):
            continue  # the same state as lora / full, on a 4-bit or a random base
        args = argparse.Namespace(steps=1, rounds=1, layers=None)
        cfg = config(mode, args, Path(tempfile.gettempdir()))
        del cfg["model"]["num_layers"]
        bundle = ModelBundle.load(load_config(cfg))
        numel = sum(t.numel() for t in bundle.mode.get_state(bundle.model).values())
        lines.append(f"| `{mode}` | {numel:,} values | {size(4 * numel)} |")
    return "\n".join(lines)


def qlora_available() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def table(rows: list[dict[str, Any]], skipped: list[str]) -> str:
    lines = [
        "| mode | bytes up / party / round | bytes down / party / round | time per step | metric | before | "
        "after | eval loss before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = "{:.1f}" if r["metric"] == "perplexity" else "{:.1%}"
        lines.append(
            f"| `{r['mode']}` | {size(r['bytes_up'])} | {size(r['bytes_down'])} | {r['step_s']:.2f} s | "
            f"{r['metric']} | {fmt.format(r['before'])} | {fmt.format(r['after'])} | "
            f"{r['loss_before']:.3f} → {r['loss_after']:.3f} |"
        )
    lines += [f"| `{m}` | not measured: needs a CUDA GPU and bitsandbytes | | | | | | |" for m in skipped]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per party and round")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of SmolLM2 kept")
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    parser.add_argument("--out", type=Path, help="write the table to this Markdown file")
    parser.add_argument(
        "--sizes-only",
        action="store_true",
        help="only the exchanged bytes on the whole SmolLM2 (no training)",
    )
    args = parser.parse_args()
    if args.sizes_only:
        print(full_model_sizes(args.modes))
        return
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            if mode == "qlora" and not qlora_available():
                skipped.append(mode)
                continue
            rows.append(measure(mode, args, Path(tmp)))
            print(rows[-1], file=sys.stderr, flush=True)
    text = table(rows, skipped)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    )
    text += f"\n\nMachine: {machine}; torch {torch.__version__}.\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
