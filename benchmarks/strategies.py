"""Accuracy per round of every aggregation strategy, and of robust ones under model poisoning.

    python benchmarks/strategies.py --quick                 # tiny model: checks the pipeline (seconds)
    python benchmarks/strategies.py --seeds 1               # SmolLM2-135M-Instruct + LoRA, real data
    python benchmarks/strategies.py --part clean --strategies fedavg,fedavgm,median

Part ``clean``: every registered strategy (or ``--strategies``) on the movie split with ``--parties`` parties.
Part ``attack``: ``--attack-parties`` parties (default 7, the fewest for which Krum tolerates f = 2) of which two
are malicious, through the simulation-only ``parties[].attack`` hook (see ``mpctf.party.attack``), in two
scenarios: both send their update sign-flipped and amplified (``sign_flip``, ×4), or both amplify it (``scale``,
×20). FedAvg is compared with ``krum`` (f=2), ``median``, ``trimmed_mean`` (β=0.3, so 2 of 7 are trimmed per
side) and ``norm_bounded`` (``max_norm`` = the median honest update norm of an attack-free FedAvg run, measured
first). Writes ``results.md``, ``results.csv``, ``curves.json``, ``accuracy_<part>.png`` and
``eval_loss_<part>.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    RunOutcome,
    base_config,
    budget_parser,
    command_line,
    fmt_ms,
    machine,
    markdown_table,
    pick_budget,
    plot_curves,
    run_isolated,
    save_json,
    seeds_of,
    write_csv,
)

from mpctf.aggregation import STRATEGIES

#: Hyper-parameters for strategies that need them to run with this benchmark's party counts.
PARAMS: dict[str, dict[str, Any]] = {"trimmed_mean": {"beta": 0.25}}
ATTACKS = {"sign_flip": {"kind": "sign_flip", "factor": 4.0}, "scale": {"kind": "scale", "factor": 20.0}}
ROBUST = ["fedavg", "krum", "median", "trimmed_mean", "norm_bounded"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = budget_parser(__doc__)
    ap.add_argument("--part", choices=["clean", "attack", "both"], default="both")
    ap.add_argument("--strategies", help="clean part: comma-separated names (default: every registered one)")
    ap.add_argument("--parties", type=int, default=4, help="clean part: parties (movie split)")
    ap.add_argument(
        "--attack-parties", type=int, default=7, help="attack part: parties, two of them malicious"
    )
    ap.add_argument("--attacks", default="sign_flip,scale")
    ap.add_argument(
        "--robust", default=",".join(ROBUST), help="attack part: strategies to compare (default: %(default)s)"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench-strategies"))
    return ap.parse_args(argv)


def honest_norm(outcome: RunOutcome) -> float:
    """The median L2 norm of the accepted updates of a run (what ``norm_bounded`` should let through)."""
    return statistics.median(r["update_norm"] for r in outcome.party_rounds if r.get("status") == "ok")


def strategy_spec(name: str, num_parties: int, max_norm: float | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, **PARAMS.get(name, {})}
    if name in ("krum", "multikrum"):
        spec["f"] = min(1, (num_parties - 3) // 2)  # Krum needs n > 2f + 2
    if name == "norm_bounded":
        spec["max_norm"] = max_norm
    return spec


def table_rows(
    outcomes: dict[str, list[RunOutcome]], reference: list[RunOutcome] | None
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    rows, csv_rows = [], []
    for label, outs in outcomes.items():
        acc = [o.final_accuracy for o in outs]
        best = [max(o.accuracy_per_round) for o in outs]
        loss = [o.eval_loss_per_round[-1] for o in outs]
        row = [label, fmt_ms(acc), fmt_ms(best), fmt_ms(loss), fmt_ms([o.seconds for o in outs], 1.0, 0)]
        if reference is not None:
            row.append(
                fmt_ms([100 * (r.final_accuracy - a) for r, a in zip(reference, acc, strict=True)], 1.0, 1)
            )
        rows.append(row)
        csv_rows.append(
            {
                "run": label,
                "final_accuracy": ";".join(f"{a:.4f}" for a in acc),
                "accuracy_per_round": ";".join(
                    "/".join(f"{a:.4f}" for a in o.accuracy_per_round) for o in outs
                ),
                "eval_loss_per_round": ";".join(
                    "/".join(f"{v:.4f}" for v in o.eval_loss_per_round) for o in outs
                ),
                "seconds": ";".join(f"{o.seconds:.1f}" for o in outs),
                "bytes_moved": ";".join(str(o.bytes_moved) for o in outs),
                "peak_mem_bytes": ";".join(str(o.peak_mem_bytes) for o in outs),
            }
        )
    return rows, csv_rows


def plot_part(
    out: Path, part: str, title: str, outcomes: dict[str, list[RunOutcome]], curves_all: dict[str, Any]
) -> None:
    """``accuracy_<part>.png`` and ``eval_loss_<part>.png``; both sets of curves into ``curves_all``."""
    accuracy = {n: [o.accuracy_per_round for o in outs] for n, outs in outcomes.items()}
    loss = {n: [o.eval_loss_per_round for o in outs] for n, outs in outcomes.items()}
    curves_all[part] = accuracy
    curves_all[f"{part}_eval_loss"] = loss
    plot_curves(out / f"accuracy_{part}.png", title, accuracy)
    plot_curves(out / f"eval_loss_{part}.png", title, loss, ylabel="held-out eval loss")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    budget = pick_budget(args)
    unknown = [n for n in args.robust.split(",") if n not in ROBUST]
    if unknown:
        raise SystemExit(f"--robust: unknown strategy {unknown[0]!r}; known: {', '.join(ROBUST)}")
    seeds = seeds_of(args)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs"
    lines = [f"Command: `{command_line()}`", f"Machine: {machine()}", f"Budget: {budget}", ""]
    csv_all: list[dict[str, Any]] = []
    curves_all: dict[str, Any] = {}

    if args.part in ("clean", "both"):
        names = args.strategies.split(",") if args.strategies else STRATEGIES.names()
        outcomes: dict[str, list[RunOutcome]] = {}
        for seed in seeds:
            fedavg_norm = None
            for name in sorted(names, key=lambda n: n != "fedavg"):  # fedavg first: norm_bounded's bound
                spec = strategy_spec(name, args.parties, fedavg_norm)
                if name == "norm_bounded" and fedavg_norm is None:
                    raise SystemExit("norm_bounded needs fedavg in --strategies (its bound is fedavg's norm)")
                cfg = base_config(
                    budget, name=f"{name}-s{seed}", seed=seed, num_parties=args.parties, split="movie",
                    out=runs, strategy=spec,
                )  # fmt: skip
                if STRATEGIES.get(name).folds_lora_scale:
                    # The server's adapter holds B·A with the scale folded in (alpha = r); the parties keep the
                    # scale every other strategy trains with.
                    lora = cfg["training"]["lora"]
                    for party in cfg["parties"]:
                        party["lora_alpha"] = lora["alpha"]
                    lora["alpha"] = lora["r"]
                outcome = run_isolated(cfg, runs / f"clean-{name}-s{seed}")
                outcomes.setdefault(name, []).append(outcome)
                if name == "fedavg":
                    fedavg_norm = honest_norm(outcome)
                print(
                    f"clean {name} seed {seed}: {outcome.accuracy_per_round} {outcome.eval_loss_per_round}",
                    flush=True,
                )
        rows, csv_rows = table_rows(outcomes, None)
        lines += [
            f"### Every strategy, movie split, {args.parties} parties, seeds {', '.join(map(str, seeds))}",
            "",
            markdown_table(
                ["strategy", "final accuracy", "best round's accuracy", "final eval loss", "wall time (s)"],
                rows,
            ),
            "",
        ]
        csv_all += [{"part": "clean", **r} for r in csv_rows]
        plot_part(args.out, "clean", f"strategies, movie split ({budget.model})", outcomes, curves_all)

    if args.part in ("attack", "both"):
        n = args.attack_parties
        outcomes = {}
        for seed in seeds:
            base = base_config(
                budget, name=f"noattack-s{seed}", seed=seed, num_parties=n, split="movie", out=runs
            )
            clean = run_isolated(base, runs / f"noattack-fedavg-s{seed}")
            outcomes.setdefault("fedavg, no attack", []).append(clean)
            bound = honest_norm(clean)
            for attack in args.attacks.split(","):
                for name in args.robust.split(","):
                    spec = strategy_spec(name, n, bound)
                    if name in ("krum", "multikrum"):
                        spec["f"] = 2
                    if name == "trimmed_mean":
                        spec["beta"] = 0.3
                    cfg = base_config(
                        budget, name=f"{attack}-{name}-s{seed}", seed=seed, num_parties=n, split="movie",
                        out=runs, strategy=spec,
                    )  # fmt: skip
                    for party in cfg["parties"][:2]:
                        party["attack"] = ATTACKS[attack]
                    outcome = run_isolated(cfg, runs / f"attack-{attack}-{name}-s{seed}")
                    outcomes.setdefault(f"{name}, {attack}", []).append(outcome)
                    print(
                        f"{attack} {name} seed {seed}: {outcome.accuracy_per_round} {outcome.eval_loss_per_round}",
                        flush=True,
                    )
        rows, csv_rows = table_rows(outcomes, outcomes["fedavg, no attack"])
        lines += [
            f"### Two malicious parties of {n}, movie split, seeds {', '.join(map(str, seeds))}",
            "",
            markdown_table(
                [
                    "strategy, attack",
                    "final accuracy",
                    "best round's accuracy",
                    "final eval loss",
                    "wall time (s)",
                    "points lost vs attack-free FedAvg",
                ],
                rows,
            ),
            "",
        ]
        csv_all += [{"part": "attack", **r} for r in csv_rows]
        plot_part(args.out, "attack", f"2 malicious of {n} parties ({budget.model})", outcomes, curves_all)

    text = "\n".join(lines)
    print(text)
    (args.out / "results.md").write_text(text)
    write_csv(args.out / "results.csv", csv_all)
    save_json(args.out / "curves.json", curves_all)


if __name__ == "__main__":
    main()
