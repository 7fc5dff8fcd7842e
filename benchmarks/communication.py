"""Bytes per round against final accuracy, for each uplink codec chain, in real federated training.

    python benchmarks/communication.py --quick            # tiny model: checks the pipeline (seconds)
    python benchmarks/communication.py --seeds 1          # SmolLM2-135M-Instruct + LoRA, movie split, 4 parties

Every chain runs the same federation (FedAvg, movie split, same seed, rounds and local steps); only the
party → server codec chain changes. "Uplink bytes per round" is the mean over rounds of the bytes all parties
sent (``len`` of each packed update); the ratio is against the same updates as plain float32 values
(``bytes_up_fp32``). The target is at least 8× fewer bytes than float32 at no more than 1 accuracy point lost
against the uncompressed run. Writes ``results.md``, ``results.csv``, ``curves.json`` and ``accuracy.png``.
"""

from __future__ import annotations

import argparse
import re
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
    mean_spread,
    pick_budget,
    plot_curves,
    run_isolated,
    save_json,
    seeds_of,
    write_csv,
)

CHAINS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "fp16": [{"name": "fp16"}],
    "int8": [{"name": "int8"}],
    "int4": [{"name": "int4"}],
    "int4 (block 256) + zstd": [{"name": "int4", "block_size": 256}, {"name": "zstd"}],
    "topk 1% + int8 + zstd": [{"name": "topk", "fraction": 0.01}, {"name": "int8"}, {"name": "zstd"}],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = budget_parser(__doc__)
    ap.add_argument("--parties", type=int, default=4)
    ap.add_argument("--split", default="movie")
    ap.add_argument(
        "--chains",
        default=",".join(CHAINS),
        help="comma-separated names from: " + ", ".join(CHAINS).replace("%", "%%"),
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench-communication"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    budget = pick_budget(args)
    seeds = seeds_of(args)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.chains.split(",")
    unknown = [n for n in names if n not in CHAINS]
    if unknown:
        raise SystemExit(f"unknown chain {unknown[0]!r}; known: {', '.join(CHAINS)}")
    outcomes: dict[str, list[RunOutcome]] = {}
    for seed in seeds:
        for label in names:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label.replace("%", "pct")).strip("-")
            tag = f"{slug}-s{seed}"
            cfg = base_config(
                budget,
                name=f"comm-{tag}",
                seed=seed,
                num_parties=args.parties,
                split=args.split,
                out=args.out / "runs",
            )
            cfg["communication"] = {"uplink": CHAINS[label]}
            outcomes.setdefault(label, []).append(run_isolated(cfg, args.out / "runs" / f"comm-{tag}"))
            o = outcomes[label][-1]
            print(
                f"{label} seed {seed}: accuracy {o.final_accuracy:.3f}, {o.bytes_up:,} bytes up", flush=True
            )
    reference = outcomes.get("none")
    rows, csv_rows = [], []
    for label, outs in outcomes.items():
        up_per_round = [o.bytes_up / budget.rounds for o in outs]
        ratio = [o.bytes_up_fp32 / o.bytes_up for o in outs]
        acc = [o.final_accuracy for o in outs]
        if reference is not None:
            loss = [100 * (r.final_accuracy - o.final_accuracy) for r, o in zip(reference, outs, strict=True)]
        else:
            loss = []
        meets = bool(loss) and mean_spread(ratio)[0] >= 8 and mean_spread(loss)[0] <= 1.0
        rows.append(
            [
                label,
                fmt_ms(up_per_round, 1e-3, 1),
                fmt_ms(ratio, 1.0, 2) + "×",
                fmt_ms(acc, 1.0, 3),
                fmt_ms(loss, 1.0, 1) if loss else "—",
                fmt_ms([o.seconds for o in outs], 1.0, 0),
                "yes" if meets else "no",
            ]
        )
        csv_rows.append(
            {
                "chain": label,
                "uplink_bytes_per_round": ";".join(f"{b:.0f}" for b in up_per_round),
                "ratio_vs_fp32": ";".join(f"{r:.3f}" for r in ratio),
                "final_accuracy": ";".join(f"{a:.4f}" for a in acc),
                "accuracy_points_lost": ";".join(f"{v:.2f}" for v in loss),
                "downlink_bytes_per_round": ";".join(f"{o.bytes_down / budget.rounds:.0f}" for o in outs),
                "seconds": ";".join(f"{o.seconds:.1f}" for o in outs),
                "peak_mem_bytes": ";".join(str(o.peak_mem_bytes) for o in outs),
            }
        )
    table = markdown_table(
        [
            "uplink chain",
            f"uplink KB per round ({args.parties} parties)",
            "vs fp32",
            "final accuracy",
            "points lost vs none",
            "wall time (s)",
            "≥8× and ≤1 pt",
        ],
        rows,
    )
    text = "\n".join(
        [
            f"Command: `{command_line()}`",
            f"Machine: {machine()}",
            f"Budget: {budget}; split {args.split}, {args.parties} parties, FedAvg, seeds {', '.join(map(str, seeds))}",
            "",
            table,
            "",
        ]
    )
    print(text)
    (args.out / "results.md").write_text(text)
    write_csv(args.out / "results.csv", csv_rows)
    curves = {label: [o.accuracy_per_round for o in outs] for label, outs in outcomes.items()}
    save_json(args.out / "curves.json", curves)
    plot_curves(args.out / "accuracy.png", f"uplink codecs, {args.split} split ({budget.model})", curves)


if __name__ == "__main__":
    main()
