"""Prompt engineering in a federation: zero-shot, black-box prompt tuning, soft prompt tuning (backprop) and LoRA.

    python benchmarks/prompt_engineering.py --quick                 # tiny model: checks the pipeline (seconds)
    python benchmarks/prompt_engineering.py --seeds 3 --out runs/prompt-engineering

Four parties hold the reviews of their own movies (Rotten Tomatoes split by movie); the server scores reviews of
movies no party holds. Every method runs the same rounds on the same split, each in its own child process so its
peak memory is its own (the local backend hosts every party in that process: the peak is the largest party's
step plus the server's state, an upper bound per party):

* ``zero-shot``: the model before any round (round 0 of the LoRA run);
* ``blackbox``: ``training.mode: blackbox_prompt`` (CMA-ES over a 500-value z, forward passes only);
* ``prompt_tuning``: 10 trained virtual-token embeddings (backprop through the frozen model);
* ``lora``: LoRA r=8 on q/v (the quickstart's).

Writes ``results.json`` and ``results.md`` (accuracy, bytes a party uploads per round, peak memory, wall time;
mean ± standard deviation over the seeds) into ``--out``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    base_config,
    budget_parser,
    command_line,
    fmt_ms,
    machine,
    markdown_table,
    pick_budget,
    run_isolated,
    seeds_of,
)

PARTIES = 4


def method_config(method: str, base: dict[str, Any], args: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(base))
    training = cfg["training"]
    if method == "lora":
        return cfg
    del training["lora"]
    if method == "prompt_tuning":
        training |= {"mode": "prompt_tuning", "lr": 0.03}
        training["prompt_tuning"] = {"num_virtual_tokens": 10}
    elif method == "blackbox":
        training["mode"] = "blackbox_prompt"
        training["blackbox_prompt"] = {
            "num_virtual_tokens": 10,
            "dim": args.dim,
            "generations": args.generations,
            "popsize": args.popsize,
        }
        # A generation scores its candidates on one batch: a round sees generations × batch rows.
        cfg["data"]["partition"]["size"] = args.generations * training["batch_size"]
    return cfg


def main(argv: list[str] | None = None) -> None:
    ap = budget_parser(__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/prompt-engineering"))
    ap.add_argument("--methods", nargs="+", default=["lora", "prompt_tuning", "blackbox"])
    ap.add_argument("--dim", type=int, default=500)
    ap.add_argument(
        "--generations", type=int, default=None, help="CMA-ES generations a round (default 8; quick 2)"
    )
    ap.add_argument(
        "--popsize", type=int, default=None, help="CMA-ES candidates a generation (default 20; quick 4)"
    )
    args = ap.parse_args(argv)
    args.generations = args.generations or (2 if args.quick else 8)
    args.popsize = args.popsize or (4 if args.quick else 20)
    if args.quick:
        args.dim = min(args.dim, 50)
    budget = pick_budget(args)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ["zero-shot", *args.methods]}
    for seed in seeds_of(args):
        base = base_config(
            budget, name="prompt-eng", seed=seed, num_parties=PARTIES, split="movie", out=args.out
        )
        for method in args.methods:
            cfg = method_config(method, base, args)
            cfg["name"] = f"{method}-s{seed}"
            outcome = run_isolated(cfg, args.out / cfg["name"])
            party_rounds = [r for r in outcome.party_rounds if r["status"] == "ok"]
            row = {
                "seed": seed,
                "accuracy": outcome.final_accuracy,
                "eval_loss": outcome.final_eval_loss,
                "bytes_up_per_party_round": outcome.bytes_up / max(len(party_rounds), 1),
                "peak_mem_bytes": outcome.peak_mem_bytes,
                "seconds": outcome.seconds,
                "party_train_seconds": sum(r["train_seconds"] for r in party_rounds)
                / max(len(party_rounds), 1),
            }
            runs[method].append(row)
            if method == args.methods[0]:
                zero = outcome.accuracy_per_round[0]
                runs["zero-shot"].append({"seed": seed, "accuracy": zero})
            print(method, seed, json.dumps(row), flush=True)
            # Written after every run, so a long benchmark stopped early keeps what it measured.
            results = {"command": command_line(), "machine": machine(), "budget": vars(budget), "runs": runs}
            (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
            (args.out / "results.md").write_text(summary(runs))
    print(summary(runs))


def summary(runs: dict[str, list[dict[str, Any]]]) -> str:
    header = ["method", "accuracy", "upload per party per round (KB)", "peak memory (GB)", "wall time (s)"]
    rows = []
    for method, rs in runs.items():
        if not rs or rs[0]["accuracy"] is None:
            continue
        if method == "zero-shot":
            rows.append([method, fmt_ms([r["accuracy"] for r in rs]), "—", "—", "—"])
            continue
        rows.append(
            [
                method,
                fmt_ms([r["accuracy"] for r in rs]),
                fmt_ms([r["bytes_up_per_party_round"] for r in rs], 1e-3),
                fmt_ms([r["peak_mem_bytes"] for r in rs], 1e-9),
                fmt_ms([r["seconds"] for r in rs], 1.0, 1),
            ]
        )
    return markdown_table(header, rows) + "\n"


if __name__ == "__main__":
    main()
