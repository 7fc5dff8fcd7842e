"""Privacy in real federated runs: accuracy against ε, and the per-round cost of secure aggregation and CKKS.

Three parties fine-tune the built-in SmolLM2-135M-Instruct with LoRA on Rotten Tomatoes, split by movie (each
party holds its own movies; the server evaluates on movies no party has), on the local backend. Each run is one
``mpctf.run`` with a different ``privacy:`` section:

- ``plain``: no privacy (ε = ∞);
- ``dp8`` / ``dp2``: client-level DP-FedAvg (central), σ chosen so that ε after all rounds is 8 / 2 (δ = 1e-5);
- ``sgd8`` / ``sgd2``: sample-level DP-SGD (Opacus) in every party, σ chosen so that each party's ε is 8 / 2;
- ``secagg`` / ``he``: secure aggregation / CKKS, no noise: same accuracy as ``plain``, what they cost.

    python benchmarks/privacy.py --rounds 3 --chunk 16 --steps 2 --runs plain,dp8,dp2,sgd8,sgd2,secagg,he

The per-algorithm micro-benchmark without a model is ``benchmarks/privacy_overhead.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import mpctf
from mpctf.privacy.accountant import epsilon_for
from mpctf.report.metrics import read_metrics

DELTA = 1e-5


def base_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return {
        "name": "privacy-bench",
        "seed": 0,
        "output_dir": str(out),
        "model": {"name": args.model},
        "training": {
            "mode": "lora",
            "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
            "batch_size": args.batch,
            "lr": args.lr,
            "max_length": 96,
            "local_steps": args.steps,
        },
        "task": {
            "type": "classification",
            "prompt": "Movie review: {text}\nIs this review positive or negative? Answer:",
            "text_field": "text",
            "label_field": "category",
            "labels": {"fresh": " positive", "rotten": " negative"},
        },
        "data": {
            "dataset": {"builtin": "rotten_tomatoes"},
            "split": {"name": "by_key", "key": "movie_name"},
            "partition": {"name": "fixed_size", "size": args.chunk},
            "eval": {
                "test_fraction": 0.1,
                "group_by": "movie_name",
                "max_samples": args.eval,
                "batch_size": 32,
            },
        },
        "parties": [{"name": "alice"}, {"name": "bob"}, {"name": "carol"}],
        "federation": {"rounds": args.rounds, "strategy": {"name": "fedavg", "weight": "samples"}},
        "backend": {"name": "local"},
    }


def calibrate(target: float, *, sampling_rate: float, steps: int) -> float:
    """The noise multiplier σ whose ε after ``steps`` releases at rate ``sampling_rate`` is ``target`` (±0.5 %)."""
    low, high = 0.3, 200.0  # ε falls as σ grows
    while high - low > 1e-3 * low:
        mid = math.sqrt(low * high)
        eps = epsilon_for(noise_multiplier=mid, sampling_rate=sampling_rate, steps=steps, delta=DELTA)
        low, high = (mid, high) if eps > target else (low, mid)
    return high


def privacy_sections(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    steps_per_round = min(args.steps, math.ceil(args.chunk / args.batch))
    sgd_rate = 1 / math.ceil(args.chunk / args.batch)  # Opacus's Poisson rate: one expected pass per round
    sections: dict[str, dict[str, Any]] = {"plain": {}, "secagg": {"secure_aggregation": {}}}
    sections["he"] = {"homomorphic_encryption": {}}
    for eps in (8, 2):
        sigma = calibrate(eps, sampling_rate=1.0, steps=args.rounds)  # every party every round: q = 1
        sections[f"dp{eps}"] = {"client_dp": {"noise_multiplier": sigma, "clip_norm": args.clip}}
        sigma = calibrate(eps, sampling_rate=sgd_rate, steps=steps_per_round * args.rounds)
        sections[f"sgd{eps}"] = {
            "sample_dp": {"noise_multiplier": sigma, "max_grad_norm": args.max_grad_norm}
        }
    return sections


def summarize(name: str, privacy: dict[str, Any], run_dir: Path, seconds: float) -> dict[str, Any]:
    records = read_metrics(run_dir / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round"]
    parties = [r for r in records if r["event"] == "party_round" and r["status"] == "ok"]
    trained = rounds[1:]
    out: dict[str, Any] = {
        "run": name,
        "privacy": privacy,
        "accuracy": [r["accuracy"] for r in rounds],
        "eval_loss": [r["eval_loss"] for r in rounds],
        "wall_s": seconds,
        "round_s": sum(r["seconds"] for r in trained) / len(trained),
        "train_phase_s": sum(r["train_phase_seconds"] for r in trained) / len(trained),
        "party_train_s": sum(p["train_seconds"] for p in parties) / len(parties),
        "update_bytes_per_party": sum(p["bytes_up"] for p in parties) / len(parties),
        "update_fp32_bytes_per_party": sum(p["bytes_up_fp32"] for p in parties) / len(parties),
    }
    if "dp_epsilon" in trained[-1]:
        out["client_epsilon"] = [r["dp_epsilon"] for r in trained]
    sgd = [
        p["dp_sgd_epsilon"] for p in parties if p["round"] == trained[-1]["round"] and "dp_sgd_epsilon" in p
    ]
    if sgd:
        out["party_epsilon_max"] = max(sgd)
    if "privacy_exchange_seconds" in trained[-1] and (
        privacy.get("secure_aggregation") is not None or privacy.get("homomorphic_encryption") is not None
    ):
        out["exchange_s_per_round"] = sum(r["privacy_exchange_seconds"] for r in trained) / len(trained)
        out["server_s_per_round"] = sum(r["privacy_server_seconds"] for r in trained) / len(trained)
        out["exchange_bytes_per_round"] = sum(
            r["privacy_exchange_bytes_up"] + r["privacy_exchange_bytes_down"] for r in trained
        ) / len(trained)
        out["party_privacy_s"] = sum(p.get("privacy_seconds", 0.0) for p in parties) / len(parties)
        setup = next(r for r in records if r["event"] == "privacy")
        if "he_setup_seconds" in setup:
            out["he_setup_s"] = setup["he_setup_seconds"]
            out["he_setup_bytes"] = setup["he_setup_bytes"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="tiny-llama for a quick smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16, help="samples per party per round")
    parser.add_argument("--steps", type=int, default=2, help="local optimizer steps per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval", type=int, default=100, help="held-out reviews scored per round")
    parser.add_argument("--clip", type=float, default=0.5, help="client DP clip norm C")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP-SGD per-example clip norm")
    parser.add_argument("--runs", default="plain,dp8,dp2,sgd8,sgd2,secagg,he")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file (default: stdout only)")
    args = parser.parse_args()
    sections = privacy_sections(args)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs.split(","):
            config = {**base_config(args, Path(tmp)), "privacy": sections[name]}
            start = time.perf_counter()
            mpctf.run(config, run_dir=Path(tmp) / name)
            result = summarize(name, sections[name], Path(tmp) / name, time.perf_counter() - start)
            line = json.dumps(result)
            print(line, flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
