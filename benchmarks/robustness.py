"""Learning under label skew: federated vs each party alone vs pooled, on tasks nobody tuned for.

    python benchmarks/robustness.py --diagnose                  # the alternation study of docs/results.md
    python benchmarks/robustness.py --tasks movie debates       # the defaults table (all variants' winners)
    python benchmarks/robustness.py --quick                     # tiny model: checks the pipeline (seconds)
    python benchmarks/robustness.py --variants quickstart lr1e-3 --seeds 1 --methods fed

The setting is the one a new user meets first: four parties of ``--rows-per-party`` rows whose share of the
task's first label is 10/30/50/70 %, a label-balanced test set from groups (movies, debates) no party holds,
SmolLM2-135M-Instruct with LoRA r=8 on q/v, batch 8, ``--local-steps`` steps a round, ``--rounds`` rounds,
scored after every round. Methods, all on the same rows and the same number of optimizer steps:

* ``fed``: the federation, once per variant (``VARIANTS``: optimizer, lr, server strategy);
* ``local``: each party alone (a one-party federation on its own rows), ``local_steps`` a round;
* ``pooled``: one party holding every party's rows, ``K × local_steps`` a round (the upper bound).

Every federated run also writes ``probe.jsonl``: per round, each party's update norm, the cosine between every
two parties' updates and each update's cosine with the mean; and every scored round the share of held-out
rows predicted as each label. Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

import _skew
from _harness import command_line, machine, markdown_table, run_isolated
from _skew import SkewTask, probed, write_silos

TASKS: dict[str, SkewTask] = {
    "movie": SkewTask(
        builtin="rotten_tomatoes",
        prompt="Movie review: {text}\nIs this review positive or negative? Answer:",
        text_field="text",
        label_field="category",
        labels={"fresh": " positive", "rotten": " negative"},
        group_by="movie_name",
        skew_label="fresh",
        rows_per_party=950,
    ),
    "trec": SkewTask(
        builtin="trec",
        prompt=(
            "Question: {text}\nDoes this question ask about a human, a location, a number, a description or an "
            "entity? Answer:"
        ),
        text_field="text",
        label_field="label",
        # TREC's sixth class, abbreviation, has 86 questions: too few to deal out with skew.
        labels={k: f" {k}" for k in ("human", "location", "number", "description", "entity")},
        group_by=None,
        skew_label="human",
        rows_per_party=600,
        test_per_label=40,
    ),
    "sms": SkewTask(
        builtin="sms_spam",
        prompt="SMS message: {text}\nIs this message spam or a normal message? Answer:",
        text_field="text",
        label_field="label",
        labels={"spam": " spam", "ham": " normal"},
        group_by=None,
        skew_label="spam",
        rows_per_party=280,
    ),
}

#: What a federated run may change; everything else is the quickstart's.
VARIANTS: dict[str, dict[str, Any]] = {
    "quickstart": {},
    "keep": {"training": {"optimizer_state": "keep"}},
    "keep+lr1e-3": {"training": {"optimizer_state": "keep", "lr": 1e-3}},
    "lr1e-3": {"training": {"lr": 1e-3}},
    "lr1e-3+fedavgm": {
        "training": {"lr": 1e-3},
        "federation": {"strategy": {"name": "fedavgm", "momentum": 0.5, "server_lr": 1.0}},
    },
    # FFA-LoRA freezes A: an update is linear in what is trained (averaging B alone is exact) and AdamW's
    # sign steps touch half the coordinates.
    "ffa_lora": {"federation": {"strategy": {"name": "ffa_lora", "weight": "samples"}}},
    "ffa_lora+keep": {
        "training": {"optimizer_state": "keep"},
        "federation": {"strategy": {"name": "ffa_lora", "weight": "samples"}},
    },
    "server_lr0.5": {"federation": {"strategy": {"name": "fedavgm", "momentum": 0.0, "server_lr": 0.5}}},
    # Truncation: at 32 tokens most rows lose part of their text; which end carries the label better?
    "keep_start@32": {"training": {"max_length": 32, "truncation": "keep_start", "optimizer_state": "keep"}},
    "keep_end@32": {"training": {"max_length": 32, "truncation": "keep_end", "optimizer_state": "keep"}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random model, few rows: pipeline check only")
    ap.add_argument("--diagnose", action="store_true", help="the quickstart's settings and the variants")
    ap.add_argument("--tasks", nargs="+", default=["movie"], choices=sorted(TASKS))
    ap.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS))
    ap.add_argument(
        "--methods", nargs="+", default=["fed", "local", "pooled"], choices=["fed", "local", "pooled", "tune"]
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--rows-per-party", type=int, help="default: the task's (movie 950, trec 600, sms 280)")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--test-per-label", type=int, help="default: the task's (movie and sms 100, trec 40)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/robustness"))
    args = ap.parse_args(argv)
    if args.variants is None:
        args.variants = sorted(VARIANTS) if args.diagnose else ["quickstart"]
    if args.quick:
        args.rows_per_party, args.test_per_label, args.rounds, args.local_steps = 40, 10, 2, 2
        args.seeds = min(args.seeds, 1)
    return args


def config(
    args: argparse.Namespace,
    task: SkewTask,
    data: Path,
    parties: list[str],
    steps: int,
    seed: int,
    name: str,
    *,
    every_round: bool = True,
) -> dict[str, Any]:
    """The issue's quickstart settings on the silo files in ``data`` for the named parties; scored after every
    round, or (``every_round=False``, the baselines) after the last one only."""
    quick = args.quick
    return {
        # Run names allow letters, digits and _ . - only.
        "name": re.sub(r"[^A-Za-z0-9_.-]", "_", name),
        "seed": seed,
        "output_dir": str(args.out),
        "model": {"name": "tiny-llama" if quick else "smollm2-135m-instruct"},
        "training": {
            "mode": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "batch_size": 4 if quick else 8,
            "lr": 3e-3,
            "max_length": 64 if quick else 128,
            "local_steps": steps,
        },
        "task": task.task_section(),
        "data": {
            "partition": {"name": "fixed_size", "size": steps * (4 if quick else 8)},
            "eval": {
                "path": str(data / "test.jsonl"),
                "max_samples": None,
                "batch_size": 24,
                "every_rounds": 1 if every_round else args.rounds,
                "before_training": every_round,
            },
        },
        "parties": [{"name": p, "data": {"path": str(data / f"{p}.jsonl")}} for p in parties],
        "federation": {
            "rounds": args.rounds,
            "min_parties": 1,
            "strategy": {"name": "fedavg", "weight": "samples"},
        },
        "backend": {"name": "local"},
    }


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a completed run (an earlier invocation's, which is reused)."""
    log = run_dir / "metrics.jsonl"
    return log.is_file() and '"event": "run_end"' in log.read_text()


def one_run(cfg: dict[str, Any], run_dir: Path, *, probe: bool) -> dict[str, Any]:
    if finished(run_dir):
        return read_run(run_dir, probe=probe)
    if probe:
        cfg["federation"]["strategy"]["name"] = probed(cfg["federation"]["strategy"]["name"])
        _skew.PROBE_FILE = run_dir / "probe.jsonl"
        _skew.PROBE_FILE.parent.mkdir(parents=True, exist_ok=True)
        _skew.PROBE_FILE.unlink(missing_ok=True)
    run_isolated(cfg, run_dir)
    _skew.PROBE_FILE = None
    return read_run(run_dir, probe=probe)


def read_run(run_dir: Path, *, probe: bool) -> dict[str, Any]:
    """What the tables need from a finished run's ``metrics.jsonl`` (and ``probe.jsonl``)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if r["event"] == "round"]
    result = {
        "accuracy": [r.get("accuracy") for r in rounds],
        "eval_loss": [r.get("eval_loss") for r in rounds],
        "seconds": records[-1]["time"] - records[0]["time"],
        "predicted_shares": [
            {k: v for k, v in r.items() if k.startswith("predicted_share_")} for r in rounds
        ],
        "party_rounds": [
            {k: r.get(k) for k in ("round", "party", "loss", "update_norm")}
            for r in records
            if r["event"] == "party_round"
        ],
    }
    if probe:
        result["probe"] = [json.loads(x) for x in (run_dir / "probe.jsonl").read_text().splitlines()]
    return result


#: What the ``tune`` method searches (successive halving, eta 2: 4 trials → 2 → 1, 8 rounds in all for 4-round
#: runs, twice one run).
TUNE_SPACE = {"training.lr": [0.001, 0.003], "training.optimizer_state": ["reset", "keep"]}


def tune_run(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """``mpctf tune`` on the silos: parties hold out 10 % of their rows for federated validation; the winner's
    test accuracy is read from its own run (the search never looks at it)."""
    from mpctf.config import load_config
    from mpctf.tune.runner import run_search

    cfg = {**cfg, "data": {**cfg["data"], "validation": {"fraction": 0.1}}}
    cfg["tune"] = {"space": TUNE_SPACE, "trials": 4, "eta": 2}
    if not (out / "search.json").is_file():
        run_search(load_config(cfg), out)
    search = json.loads((out / "search.json").read_text())
    result = read_run(out / search["best"], probe=False)
    best = next(t for t in search["trials"] if t["name"] == search["best"])
    return {**result, "overrides": best["overrides"], "rounds_run": search["rounds_run"]}


def max_drop(curve: list[float | None], after: int = 2) -> float:
    """The largest fall of the scored accuracy from one round to the next, from round ``after`` on."""
    pts = [a for i, a in enumerate(curve) if a is not None and i >= after]
    return max([a - b for a, b in itertools.pairwise(pts)] + [0.0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": command_line(), "machine": machine(), "runs": {}}
    parties = [f"party{i}" for i in range(len(args.shares))]
    for task_name in args.tasks:
        task = TASKS[task_name]
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            data = args.out / "data" / f"{task_name}-s{seed}"
            rows = args.rows_per_party or task.rows_per_party
            test_rows = args.test_per_label or task.test_per_label
            counts = write_silos(task, args.shares, rows, test_rows, seed, data)
            results.setdefault("silos", {})[f"{task_name}-s{seed}"] = counts
            runs = results["runs"]
            if "fed" in args.methods:
                for variant in args.variants:
                    key = f"{task_name}/fed/{variant}/s{seed}"
                    cfg = merged(
                        config(args, task, data, parties, args.local_steps, seed, key), VARIANTS[variant]
                    )
                    runs[key] = one_run(cfg, args.out / key, probe=True)
                    print(key, runs[key]["accuracy"], flush=True)
            if "pooled" in args.methods:
                pooled = data / "pooled.jsonl"
                pooled.write_text("".join((data / f"{p}.jsonl").read_text() for p in parties))
                key = f"{task_name}/pooled/s{seed}"
                steps = args.local_steps * len(parties)
                cfg = config(args, task, data, ["pooled"], steps, seed, key, every_round=False)
                runs[key] = one_run(cfg, args.out / key, probe=False)
                print(key, runs[key]["accuracy"], flush=True)
            if "local" in args.methods:
                for p in parties:
                    key = f"{task_name}/local/{p}/s{seed}"
                    cfg = config(args, task, data, [p], args.local_steps, seed, key, every_round=False)
                    runs[key] = one_run(cfg, args.out / key, probe=False)
                    print(key, runs[key]["accuracy"], flush=True)
            if "tune" in args.methods:
                key = f"{task_name}/tune/s{seed}"
                runs[key] = tune_run(
                    config(args, task, data, parties, args.local_steps, seed, key), args.out / key
                )
                print(key, runs[key]["accuracy"], flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(summary(results))
    print(summary(results))


def summary(results: dict[str, Any]) -> str:
    """One row per task and method (federated variants separately): final accuracy per seed, their mean, the
    largest round-to-round fall after round 2, and the mean cosine between two parties' updates."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, run in results["runs"].items():
        task, method, *rest = key.split("/")
        label = f"{task}, {method}" + (f" {rest[0]}" if method == "fed" else "")
        if method == "local":  # each party alone: the mean over parties is one figure per seed
            label = f"{task}, local (mean of parties)"
        groups.setdefault(label, []).append({**run, "seed": rest[-1]})
    rows = []
    for label, runs in groups.items():
        by_seed: dict[str, list[float]] = {}
        for run in runs:
            by_seed.setdefault(run["seed"], []).append(run["accuracy"][-1])
        finals = [statistics.fmean(v) for v in by_seed.values()]
        drops = [max_drop(run["accuracy"]) for run in runs if "probe" in run]
        cosines = [
            statistics.fmean(rec["cos_pairs"].values())
            for run in runs
            for rec in run.get("probe", [])
            if rec["cos_pairs"]
        ]
        rows.append(
            [
                label,
                ", ".join(f"{f:.3f}" for f in finals),
                f"{statistics.fmean(finals):.3f}",
                f"{max(drops):.3f}" if drops else "",
                f"{statistics.fmean(cosines):.2f}" if cosines else "",
            ]
        )
    header = [
        "task, method",
        "final accuracy per seed",
        "mean",
        "largest fall after round 2",
        "mean cos(Δi, Δj)",
    ]
    return f"{results['command']}\n\n{results['machine']}\n\n" + markdown_table(header, rows) + "\n"


if __name__ == "__main__":
    main()
