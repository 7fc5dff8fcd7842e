"""Does collaborating pay? Zero-shot vs each party alone vs federated vs centralized, same budget.

    python benchmarks/collaboration.py                               # the CPU table of docs/results.md
    python benchmarks/collaboration.py --quick                       # tiny model: checks the pipeline (seconds)
    python benchmarks/collaboration.py --settings movie:4 --seeds 1  # one setting, one seed
    python benchmarks/collaboration.py --gpu                         # bigger budgets (default when CUDA exists)
    python benchmarks/collaboration.py --merge runs/a runs/b --out runs/ab     # one table from several runs

Without options on a CPU it runs the table of docs/results.md: SmolLM2-135M-Instruct with LoRA, silos of 16
reviews per party, 4 rounds of 4 steps of 4 reviews, 128 held-out reviews scored after rounds 2 and 4,
settings movie:4, movie:8 (compared strategy FedAvgM) and label_skew:4 (SCAFFOLD), seeds 0-2. Any budget
option overrides its part of that.

Every method is a federation run through ``mpctf.run`` with the same model, LoRA, batch size, learning rate,
rounds and seeds; only who trains on what changes:

* zero-shot: round 0 of the FedAvg run (the untrained model on the same held-out movies);
* local-only: each party as a 1-party federation on its own rows (its share of the split, exported to a file),
  ``local_steps`` per round, as in the federation; the table shows the mean and the worst party;
* federated FedAvg and federated with the setting's strategy (``--best-strategy`` unless the setting names
  one): all parties, ``local_steps`` each per round;
* centralized: one party holding the pooled training rows of all parties, doing ``K × local_steps`` steps per
  round, so it spends the federation's total step budget (the upper bound).

``--party-samples N`` models silos with little labelled data: each party keeps a seeded sample of N rows of its
share, and every method trains on exactly those rows (centralized on their union); ``all`` keeps whole shares.

Settings are ``split:parties[:strategy]``: ``movie`` deals whole movies to parties; ``label_skew`` is a
pathological label skew (Dirichlet(0.05) per label). Evaluation is always on reviews of held-out movies. Writes
``results.md``, ``results.csv``, ``curves.json`` and one ``accuracy_<setting>.png`` per setting into ``--out``.

``--merge`` trains nothing: it joins the tables of earlier invocations (for example seeds run on different days
or machines) into one, refusing folders whose budgets, rows per party or methods differ, or that repeat a seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    Budget,
    RunOutcome,
    base_config,
    budget_parser,
    command_line,
    fmt_ms,
    is_cpu_budget,
    machine,
    markdown_table,
    pick_budget,
    plot_curves,
    run_isolated,
    save_json,
    seeds_of,
    write_csv,
)

from mpctf.config import load_config
from mpctf.data.federated import FederatedData

#: The CPU table's budget (docs/results.md), with silos of 16 reviews (``--party-samples``): one pass over a
#: party's rows per round, 4 rounds, the model scored after rounds 2 and 4. Sized so that the whole table, 3
#: settings x 3 seeds x every method, takes under 90 minutes on 2 cores, where one step of 4 reviews costs ~1 s
#: and scoring the 128 held-out reviews ~10 s.
CPU_TABLE = {"rounds": 4, "local_steps": 4, "batch_size": 4, "eval_samples": 128, "eval_every": 2}
CPU_PARTY_SAMPLES = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = budget_parser(__doc__)
    ap.add_argument(
        "--settings",
        default="movie:4,movie:8,label_skew:4:scaffold",
        help="split:parties[:strategy], comma separated; the strategy compared with FedAvg in that setting",
    )
    ap.add_argument(
        "--best-strategy",
        default="fedavgm",
        help="the strategy compared with FedAvg where a setting names none",
    )
    ap.add_argument(
        "--party-samples",
        metavar="N|all",
        help="each party keeps only N of its rows (a seeded sample): silos with little labelled data; `all` keeps "
        f"its whole share of the split (default: {CPU_PARTY_SAMPLES} with the CPU budget, otherwise all)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench-collaboration"))
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="train nothing: join the tables in these earlier --out folders into one, written to --out",
    )
    args = ap.parse_args(argv)
    if is_cpu_budget(args):
        for key, value in {**CPU_TABLE, "party_samples": str(CPU_PARTY_SAMPLES)}.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    if args.party_samples in (None, "all"):
        args.party_samples = None
    elif not args.party_samples.isdigit() or int(args.party_samples) < 1:
        ap.error(f"--party-samples must be a whole number of at least 1 or `all`, not {args.party_samples!r}")
    else:
        args.party_samples = int(args.party_samples)
    for setting in args.settings.split(","):
        if not re.fullmatch(r"\w+:[1-9]\d*(:\w+)?", setting):
            ap.error(
                f"--settings: {setting!r} is not split:parties[:strategy], e.g. movie:4 or label_skew:4:scaffold"
            )
    return args


def run_setting(
    budget: Budget,
    split: str,
    num_parties: int,
    seed: int,
    best: str,
    out: Path,
    party_samples: int | None = None,
) -> dict[str, Any]:
    """All methods for one split, party count and seed; returns their outcomes by method.

    With ``party_samples`` every method trains on the same small silos: each party's sample is written to a
    file, the federations and the local-only runs read those files, and centralized reads their union."""
    tag = f"{split}-{num_parties}p-s{seed}" + (f"-n{party_samples}" if party_samples else "")
    common = {"seed": seed, "num_parties": num_parties, "split": split, "out": out / "runs"}
    fed = base_config(budget, name=f"fedavg-{tag}", **common)
    data = FederatedData(load_config(fed))
    labels = [r["category"] for r in data.eval_rows()]
    # Each party's exact share of this split, as its own data file (local-only runs need it; with
    # --party-samples the federations use it too).
    files: dict[str, Path] = {}
    pooled: list[dict[str, Any]] = []
    for party in (p["name"] for p in fed["parties"]):
        rows = data.party_rows(party)
        if party_samples is not None:
            rows = random.Random(f"{seed}-{party}").sample(rows, min(party_samples, len(rows)))
        files[party] = out / "runs" / f"data-{tag}-{party}.jsonl"
        files[party].parent.mkdir(parents=True, exist_ok=True)
        files[party].write_text("".join(json.dumps(r) + "\n" for r in rows))
        pooled += rows

    def federation(name: str, **overrides: Any) -> dict[str, Any]:
        config = base_config(budget, name=f"{name}-{tag}", **common, **overrides)
        if party_samples is not None:
            config["parties"] = [{"name": p, "data": {"path": str(f.resolve())}} for p, f in files.items()]
        return config

    def unscored_start(config: dict[str, Any]) -> dict[str, Any]:
        # The untrained model is the same for every method of a seed (LoRA starts as the identity), so only the
        # FedAvg run scores it: zero-shot.
        config["data"]["eval"]["before_training"] = False
        return config

    results: dict[str, Any] = {}
    results["fedavg"] = run_isolated(federation("fedavg"), out / "runs" / f"fedavg-{tag}")
    results["best"] = run_isolated(
        unscored_start(federation(best, strategy={"name": best})), out / "runs" / f"{best}-{tag}"
    )
    # The accuracy of always answering the held-out set's most frequent label: the bar a model must clear.
    results["majority"] = max(labels.count(v) for v in set(labels)) / len(labels)
    local: list[RunOutcome] = []
    for party, path in files.items():
        alone = base_config(budget, name=f"local-{tag}-{party}", **common)
        alone["parties"] = [{"name": party, "data": {"path": str(path.resolve())}}]
        # Only the end of each party's training is in the table; scoring its other rounds too made the
        # local-only runs cost more evaluation than training.
        alone["data"]["eval"]["every_rounds"] = budget.rounds
        local.append(run_isolated(unscored_start(alone), out / "runs" / f"local-{tag}-{party}"))
    results["local"] = local
    # Centralized: one holder of every party's rows, spending the federation's total steps per round.
    central = unscored_start(
        base_config(budget, name=f"central-{tag}", **{**common, "num_parties": 1, "split": "iid"})
    )
    if party_samples is not None:
        union = out / "runs" / f"data-{tag}-pooled.jsonl"
        union.write_text("".join(json.dumps(r) + "\n" for r in pooled))
        central["parties"] = [{"name": "pooled", "data": {"path": str(union.resolve())}}]
    steps = budget.local_steps * num_parties
    central["training"]["local_steps"] = steps
    central["data"]["partition"]["size"] = budget.batch_size * steps
    results["central"] = run_isolated(central, out / "runs" / f"central-{tag}")
    return results


def summarize(
    per_seed: list[dict[str, Any]], best: str
) -> tuple[list[dict[str, Any]], dict[str, list[list[float]]]]:
    """Rows of the table (one per method) and accuracy curves per method (one per seed)."""
    methods: dict[str, list[RunOutcome]] = {}
    curves: dict[str, list[list[float]]] = {}
    worst: list[RunOutcome] = []
    for res in per_seed:
        methods.setdefault("local-only (mean of parties)", []).extend(res["local"])
        methods.setdefault("federated FedAvg", []).append(res["fedavg"])
        methods.setdefault(f"federated {best}", []).append(res["best"])
        methods.setdefault("centralized (pooled data)", []).append(res["central"])
        worst.append(min(res["local"], key=lambda o: o.final_accuracy))
    rows: list[dict[str, Any]] = []
    no_run: dict[str, list[Any]] = {"seconds": [], "bytes": [], "peak": []}
    zero = [r["fedavg"].accuracy_per_round[0] for r in per_seed]
    zero_loss = [r["fedavg"].eval_loss_per_round[0] for r in per_seed]
    rows.append({"method": "zero-shot", "acc": zero, "loss": zero_loss, **no_run})
    majority = [r["majority"] for r in per_seed]
    rows.append({"method": "majority label (no model)", "acc": majority, "loss": [], **no_run})
    for label, outs in methods.items():
        row = {
            "method": label,
            "acc": [o.final_accuracy for o in outs],
            "loss": [o.final_eval_loss for o in outs],
            "seconds": [o.seconds for o in outs],
            "bytes": [o.bytes_moved for o in outs],
            "peak": [o.peak_mem_bytes for o in outs],
        }
        if label.startswith("local-only"):
            # Mean over parties first within each seed, so the spread is across seeds like every other row.
            k = len(per_seed[0]["local"])
            row["acc"] = [sum(o.final_accuracy for o in r["local"]) / k for r in per_seed]
            row["loss"] = [sum(o.final_eval_loss for o in r["local"]) / k for r in per_seed]
            rows.append(row)
            rows.append(
                {
                    **row,
                    "method": "local-only (worst party)",
                    "acc": [o.final_accuracy for o in worst],
                    "loss": [o.final_eval_loss for o in worst],
                }
            )
        else:
            rows.append(row)
    for res in per_seed:
        zero_shot = res["fedavg"].accuracy_per_round[:1]
        curves.setdefault("FedAvg", []).append(res["fedavg"].accuracy_per_round)
        curves.setdefault(best, []).append(zero_shot + res["best"].accuracy_per_round[1:])
        curves.setdefault("centralized", []).append(zero_shot + res["central"].accuracy_per_round[1:])
        per_party = [o.accuracy_per_round for o in res["local"]]
        mean = [
            None if None in scores else sum(scores) / len(scores) for scores in zip(*per_party, strict=True)
        ]
        curves.setdefault("local-only (mean)", []).append(zero_shot + mean[1:])
    return rows, curves


def render(rows: list[dict[str, Any]]) -> str:
    def cell(values: list[float], scale: float, digits: int) -> str:
        return fmt_ms(values, scale, digits) if values else "—"

    table = []
    for r in rows:
        nothing_moves = r["method"].startswith(("local-only", "centralized", "zero-shot", "majority"))
        table.append(
            [
                r["method"],
                cell(r["acc"], 1.0, 3),
                cell(r["loss"], 1.0, 3),
                cell(r["seconds"], 1.0, 0),
                "— (none needed)" if nothing_moves else cell(r["bytes"], 1e-6, 2),
                cell(r["peak"], 2**-20, 0),
            ]
        )
    return markdown_table(
        [
            "method",
            "accuracy",
            "eval loss",
            "wall time per run (s)",
            "MB moved (up + down)",
            "peak memory (MiB)",
        ],
        table,
    )


@dataclass
class SettingTable:
    """One setting's table: its rows (see :func:`summarize`), accuracy curves and seeds."""

    setting: str
    seeds: list[int]
    rows: list[dict[str, Any]]
    curves: dict[str, list[list[float]]]


def write_report(out: Path, header: list[str], tables: list[SettingTable], model: str) -> None:
    """``results.md``, ``results.csv``, ``curves.json`` and one accuracy plot per setting, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    lines = list(header)
    csv_rows: list[dict[str, Any]] = []
    for t in tables:
        split, parties = t.setting.split(":")
        lines += [
            f"### {split} split, {parties} parties, seeds {', '.join(map(str, t.seeds))}",
            "",
            render(t.rows),
            "",
        ]
        csv_rows += [
            {
                "setting": t.setting,
                "method": r["method"],
                "accuracy_per_seed": ";".join(f"{a:.4f}" for a in r["acc"]),
                "eval_loss_per_seed": ";".join(f"{v:.4f}" for v in r["loss"]),
                "seconds_per_run": ";".join(f"{s:.1f}" for s in r["seconds"]),
                "bytes_moved": ";".join(str(b) for b in r["bytes"]),
                "peak_mem_bytes": ";".join(str(p) for p in r["peak"]),
            }
            for r in t.rows
        ]
        plot_curves(
            out / f"accuracy_{split}_{parties}.png", f"{split} split, {parties} parties ({model})", t.curves
        )
    (out / "results.md").write_text("\n".join(lines))
    write_csv(out / "results.csv", csv_rows)
    save_json(out / "curves.json", {t.setting: t.curves for t in tables})
    print(f"wrote {out}/results.md, results.csv, curves.json and the plots")


_HEADING = re.compile(r"^### (\w+) split, (\d+) parties, seeds (.+)$")
#: Lines of results.md that must agree for two folders' runs to share one table.
_SAME = ("Budget:", "Rows per party:")


def merge(dirs: list[Path], out: Path) -> None:
    """Join earlier invocations' tables (their ``results.md``, ``results.csv`` and ``curves.json``) into one."""
    header: dict[str, str] = {}
    provenance: list[str] = []
    tables: dict[str, SettingTable] = {}
    for d in dirs:
        files = [d / "results.md", d / "results.csv", d / "curves.json"]
        if missing := [f.name for f in files if not f.is_file()]:
            raise SystemExit(f"--merge: {d} has no {', '.join(missing)}; give --out folders of this script")
        md = files[0].read_text().splitlines()
        for key in _SAME:
            line = next((x for x in md if x.startswith(key)), "")
            if header.setdefault(key, line) != line:
                raise SystemExit(f"--merge: {d} differs from {dirs[0]} in its {key.rstrip(':')} ({line!r})")
        provenance += [x for x in md if x.startswith(("Command:", "Machine:"))]
        seeds = {f"{m[1]}:{m[2]}": [int(v) for v in m[3].split(", ")] for m in map(_HEADING.match, md) if m}
        with files[1].open(newline="") as fh:
            csv_rows = list(csv.DictReader(fh))
        curves = json.loads(files[2].read_text())
        for setting, setting_seeds in seeds.items():
            rows = [_row_of(r) for r in csv_rows if r["setting"] == setting]
            table = tables.setdefault(
                setting, SettingTable(setting, [], [{**r, **{k: [] for k in _COLUMNS}} for r in rows], {})
            )
            if repeated := set(setting_seeds) & set(table.seeds):
                raise SystemExit(f"--merge: {d} repeats seed(s) {sorted(repeated)} of setting {setting}")
            if [r["method"] for r in rows] != [r["method"] for r in table.rows]:
                raise SystemExit(f"--merge: {d} compares other methods in setting {setting} than {dirs[0]}")
            table.seeds += setting_seeds
            for mine, theirs in zip(table.rows, rows, strict=True):
                for key in _COLUMNS:
                    mine[key] += theirs[key]
            for method, per_seed in curves[setting].items():
                table.curves.setdefault(method, []).extend(per_seed)
    model = re.search(r"model='([^']+)'", header["Budget:"])
    write_report(
        out,
        [*provenance, *(header[k] for k in _SAME), f"Merged from: {', '.join(map(str, dirs))}", ""],
        list(tables.values()),
        model[1] if model else "",
    )


_COLUMNS = ("acc", "loss", "seconds", "bytes", "peak")


def _row_of(r: dict[str, str]) -> dict[str, Any]:
    def values(key: str, kind: type) -> list[Any]:
        return [kind(v) for v in r[key].split(";") if v]

    return {
        "method": r["method"],
        "acc": values("accuracy_per_seed", float),
        "loss": values("eval_loss_per_seed", float),
        "seconds": values("seconds_per_run", float),
        "bytes": values("bytes_moved", int),
        "peak": values("peak_mem_bytes", int),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        return
    budget = pick_budget(args)
    seeds = seeds_of(args)
    header = [
        f"Command: `{command_line()}`",
        f"Machine: {machine()}",
        f"Budget: {budget}",
        f"Rows per party: {args.party_samples or 'its whole share of the split'}",
        "",
    ]
    tables = []
    for spec in args.settings.split(","):
        split, parties, *named = spec.split(":")
        setting, best = f"{split}:{parties}", named[0] if named else args.best_strategy
        per_seed = [
            run_setting(budget, split, int(parties), seed, best, args.out, args.party_samples)
            for seed in seeds
        ]
        rows, curves = summarize(per_seed, best)
        tables.append(SettingTable(setting, seeds, rows, curves))
        print(f"### {setting}, seeds {seeds}\n\n{render(rows)}\n", flush=True)
        # Written after every setting, so a long invocation that stops keeps the settings it finished.
        write_report(args.out, header, tables, budget.model)


if __name__ == "__main__":
    main()
