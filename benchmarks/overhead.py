"""Framework overhead per round and party training throughput against a plain PyTorch/PEFT loop.

    python benchmarks/overhead.py --backend local  [--model smollm2-135m-instruct] [--rounds 3]
    python benchmarks/overhead.py --backend flower

Overhead per round = wall time of the round's training phase minus the time parties spent training (the sum on
the sequential ``local`` backend, the slowest party on ``flower`` where parties train in parallel). Throughput is
answer+prompt tokens per second of training, compared with a hand-written loop doing the same optimizer steps
on the same examples with the same model, LoRA config and batch size.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _harness import MOVIE_TASK

import mpctf
from mpctf.config import load_config
from mpctf.data.federated import FederatedData
from mpctf.data.task_base import next_token_pairs
from mpctf.data.tasks import ClassificationTask, answer_loss, collate
from mpctf.model.bundle import ModelBundle
from mpctf.report.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def federation(model: str, backend: str, rounds: int, out: Path) -> dict:
    return {
        "name": f"overhead-{backend}",
        "seed": 0,
        "output_dir": str(out),
        "model": {"name": model},
        "training": {
            "batch_size": 8,
            "lr": 2e-3,
            "max_length": 128,
            "local_steps": 4,
            "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        },
        "task": copy.deepcopy(MOVIE_TASK),
        "data": {
            "dataset": {"builtin": "rotten_tomatoes", "max_samples": 1200},
            "split": {"name": "by_key", "key": "movie_name"},
            "partition": {"name": "fixed_size", "size": 32},
            "eval": {"test_fraction": 0.1, "group_by": "movie_name", "max_samples": 64},
        },
        "parties": [{"name": "alice"}, {"name": "bob"}],
        "federation": {"rounds": rounds},
        "backend": {"name": backend},
    }


def plain_loop_tokens_per_second(cfg_dict: dict, steps: int) -> float:
    """The same LoRA steps written as the shortest PyTorch/PEFT loop, timed the same way as the party's."""
    cfg = load_config(cfg_dict)
    bundle = ModelBundle.load(cfg)
    task = ClassificationTask(cfg.task, bundle.tokenizer, cfg.training.max_length)
    examples = task.encode_all(FederatedData(cfg).party_rows("alice"), "alice")
    params = [p for p in bundle.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.training.lr)
    bs = cfg.training.batch_size
    bundle.model.train()
    tokens, start = 0, time.perf_counter()
    for step in range(steps):
        batch = collate(examples[step * bs : (step + 1) * bs], bundle.pad_id)
        opt.zero_grad(set_to_none=True)
        logits = bundle.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = answer_loss(*next_token_pairs(logits, batch.labels))
        loss.backward()
        opt.step()
        tokens += batch.num_tokens
    return tokens / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["local", "flower"], default="local")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = federation(args.model, args.backend, args.rounds, Path(tmp))
        result = mpctf.run(cfg, run_dir=Path(tmp) / "run")
        records = read_metrics(result.run_dir / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round" and r["round"] > 0]
    parties = [r for r in records if r["event"] == "party_round" and r["status"] == "ok"]
    overheads, rates = [], []
    for rnd in rounds:
        mine = [p for p in parties if p["round"] == rnd["round"]]
        training = (
            sum(p["train_seconds"] for p in mine)
            if args.backend == "local"
            else max(p["train_seconds"] for p in mine)
        )
        overheads.append(rnd["train_phase_seconds"] - training)
        rates += [p["tokens"] / p["train_seconds"] for p in mine]
    plain = plain_loop_tokens_per_second(cfg, steps=4 * args.rounds)
    party_rate = statistics.median(rates)
    print(f"backend={args.backend} model={args.model} rounds={args.rounds} parties=2 local_steps=4 batch=8")
    print(
        f"framework overhead per round: median {statistics.median(overheads):.2f} s "
        f"(rounds: {', '.join(f'{o:.2f}' for o in overheads)})"
    )
    print(
        f"party training throughput: median {party_rate:.0f} tokens/s; plain PyTorch/PEFT loop {plain:.0f} tokens/s;"
        f" ratio {party_rate / plain:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
