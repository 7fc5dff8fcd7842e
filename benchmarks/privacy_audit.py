"""What each protection buys, measured on real runs: audits of the ledgers and attacks on the model and updates.

    python benchmarks/privacy_audit.py --quick                    # tiny model: checks the pipeline (seconds)
    python benchmarks/privacy_audit.py --out runs/privacy-audit   # SmolLM2 on the movie split (docs/privacy-audit.md)

Four parties hold ``--rows-per-party`` Rotten Tomatoes reviews each, 10/30/50/70 % of them positive, from movies
disjoint from a label-balanced held-out set (``benchmarks/_skew.py``); SmolLM2-135M-Instruct with LoRA r=8 on q/v,
batch 8, every round one pass over each party's rows, FedAvg by samples. Each run differs only in ``privacy:``:

- ``plain``: nothing; ``secagg``: secure aggregation (no noise: what the server sees changes, the model does not);
- ``dp2`` / ``dp8`` / ``dp32``: client-level DP (central), σ set so that ε after the last round is 2 / 8 / 32
  (δ = 1e-5), with the in-run canary audit (``privacy.audit``, Andrew et al. 2024);
- ``sgd8``: sample-level DP-SGD at ε ≈ 8 per party, with ``privacy.audit.canary_rows`` (Steinke et al. 2023).

On each finished run: the ledger's ε next to the audit's estimate and lower bounds; membership inference on the
final model (loss threshold, and offline LiRA with ``--references`` reference federations trained like ``plain``
on rows nobody else uses), at row and party level, members being every party's rows and non-members the held-out
rows; and the curious server's label-share attack on the round-1 updates it saw, in ``plain`` and ``secagg``.
Writes ``results.json``, ``results.md`` and ``audit.png`` into ``--out``; finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _audit_attacks
from _harness import command_line, machine, markdown_table
from _skew import write_silos
from robustness import TASKS, config, finished, merged

from mpctf.privacy.accountant import epsilon_for

DELTA = 1e-5
SHARES = (0.1, 0.3, 0.5, 0.7)
PARTIES = [f"party{i}" for i in range(len(SHARES))]
CONFIGS = ("plain", "secagg", "dp2", "dp8", "dp32", "sgd8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random model, few rows: checks the pipeline")
    ap.add_argument("--out", type=Path, default=Path("runs/privacy-audit"))
    ap.add_argument(
        "--configs", nargs="+", choices=CONFIGS, help="default: all (quick: plain secagg dp8 sgd8)"
    )
    ap.add_argument("--rows-per-party", type=int, default=None, help="default 64 (quick: 16)")
    ap.add_argument("--rounds", type=int, default=None, help="default 4 (quick: 2)")
    ap.add_argument("--references", type=int, default=2, help="reference federations for offline LiRA")
    ap.add_argument(
        "--canary-rows", type=int, default=None, help="DP-SGD audit canaries; default 128 (quick 16)"
    )
    ap.add_argument("--clip", type=float, default=1.0, help="client DP's clip norm")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.configs = args.configs or (["plain", "secagg", "dp8", "sgd8"] if args.quick else list(CONFIGS))
    args.rows_per_party = args.rows_per_party or (16 if args.quick else 64)
    args.rounds = args.rounds or (1 if args.quick else 4)
    args.canary_rows = args.canary_rows or (16 if args.quick else 128)
    args.batch = 4 if args.quick else 8
    args.test_per_label = 8 if args.quick else 100
    return args


def calibrate(target: float, *, sampling_rate: float, steps: int) -> float:
    """The noise multiplier whose ε after ``steps`` releases at ``sampling_rate`` is ``target`` (±0.1 %)."""
    low, high = 0.2, 500.0
    while high - low > 1e-3 * low:
        mid = math.sqrt(low * high)
        eps = epsilon_for(noise_multiplier=mid, sampling_rate=sampling_rate, steps=steps, delta=DELTA)
        low, high = (mid, high) if eps > target else (low, mid)
    return high


def privacy_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "plain":
        return {}
    if name == "secagg":
        return {"secure_aggregation": {}}
    eps = float(name.removeprefix("dp").removeprefix("sgd"))
    if name.startswith("dp"):  # every party in every round: q = 1
        sigma = calibrate(eps, sampling_rate=1.0, steps=args.rounds)
        return {
            "client_dp": {"noise_multiplier": sigma, "clip_norm": args.clip, "delta": DELTA},
            "audit": {"canaries": 100, "unseen": 100},
        }
    # DP-SGD: a round is one pass of Poisson batches over the party's rows and its trained canaries.
    rows = args.rows_per_party + args.canary_rows // 2
    steps = math.ceil(rows / args.batch)
    sigma = calibrate(eps, sampling_rate=args.batch / rows, steps=steps * args.rounds)
    return {
        "sample_dp": {"noise_multiplier": sigma, "max_grad_norm": 1.0, "delta": DELTA},
        "audit": {"canary_rows": args.canary_rows},
    }


def run_config(name: str, args: argparse.Namespace, data: Path, key: str) -> dict[str, Any]:
    steps = math.ceil(args.rows_per_party / args.batch)
    cfg = config(args, TASKS["movie"], data, PARTIES, steps, args.seed, key)
    privacy = privacy_section(name, args)
    if "sample_dp" in privacy:  # the whole party (canaries included) each round
        rows = args.rows_per_party + args.canary_rows
        cfg["training"]["local_steps"] = math.ceil((args.rows_per_party + args.canary_rows // 2) / args.batch)
        cfg["data"]["partition"]["size"] = rows
    cfg["data"]["eval"]["every_rounds"] = args.rounds
    cfg["data"]["eval"]["before_training"] = False
    strategy = cfg["federation"]["strategy"]
    strategy["name"] = _audit_attacks.capturing(strategy["name"])
    return merged(cfg, {"privacy": privacy}) if privacy else cfg


def unused_rows(data: Path, salt: str) -> dict[str, list[dict[str, Any]]]:
    """The movie task's rows, by label and shuffled, that neither the target's parties nor its held-out set hold."""
    from mpctf.data.sources import BUILTINS

    task = TASKS["movie"]
    used = {json.loads(x)["text"] for f in data.glob("*.jsonl") for x in f.read_text().splitlines()}
    pool = [
        r for r in BUILTINS[task.builtin]() if r["text"] not in used and r[task.label_field] in task.labels
    ]
    random.Random(salt).shuffle(pool)
    return {label: [r for r in pool if r[task.label_field] == label] for label in task.labels}


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def reference_silos(data: Path, folder: Path, args: argparse.Namespace, index: int) -> None:
    """Parties with the target's label shares, dealt from rows the target never uses, and its held-out set."""
    task = TASKS["movie"]
    by_label = unused_rows(data, f"reference:{args.seed}:{index}")
    other = next(label for label in task.labels if label != task.skew_label)
    for party, share in zip(PARTIES, SHARES, strict=True):
        n_skew = round(args.rows_per_party * share)
        rows = [by_label[task.skew_label].pop() for _ in range(n_skew)]
        rows += [by_label[other].pop() for _ in range(args.rows_per_party - n_skew)]
        _write(folder / f"{party}.jsonl", rows)
    _write(folder / "test.jsonl", [json.loads(x) for x in (data / "test.jsonl").read_text().splitlines()])


def public_rows(data: Path, folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The curious server's public labelled rows (as many per label as a party holds), from unused rows."""
    by_label = unused_rows(data, f"public:{args.seed}")
    out = {}
    for label, rows in by_label.items():
        out[label] = folder / f"{label}.jsonl"
        _write(out[label], rows[: args.rows_per_party])
    return out


def train(cfg: dict[str, Any], run_dir: Path) -> None:
    """One run, in this process (no peak memory is measured here), unless an earlier invocation finished it."""
    import mpctf

    if finished(run_dir):
        return
    _audit_attacks.CAPTURE_DIR = run_dir / "captured"
    mpctf.run(cfg, run_dir=run_dir)
    _audit_attacks.CAPTURE_DIR = None


def ledger(run_dir: Path) -> dict[str, Any]:
    """Accuracy, eval loss, the ledger's ε and every audit figure of the run's last round."""
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["event"] == "round"][-1]
    parties = [r for r in records if r["event"] == "party_round" and r["round"] == last["round"]]
    out = {k: last.get(k) for k in ("accuracy", "eval_loss", "dp_epsilon", "audit_violated")}
    out |= {k: v for k, v in last.items() if k.startswith("audit_epsilon")}
    out["seconds"] = records[-1]["time"] - records[0]["time"]
    trained = [r for r in records if r["event"] == "round" and r["round"] > 0]
    if any("audit_epsilon_estimate" in r for r in trained):
        # The server's privacy work (noise, then the audit) as a share of the rounds: the audit's cost at most.
        out["audit_time_share_at_most"] = sum(r["privacy_server_seconds"] for r in trained) / sum(
            r["seconds"] for r in trained
        )
    every = [r for r in records if r["event"] == "party_round" and r["status"] == "ok"]
    if any("audit_rows_seconds" in r for r in every):
        # The canary rows' scoring as a share of all the parties' time in the run.
        out["audit_time_share"] = sum(r.get("audit_rows_seconds", 0.0) for r in every) / sum(
            r["party_seconds"] for r in every
        )
    if any("dp_sgd_epsilon" in p for p in parties):
        out["dp_sgd_epsilon"] = max(p["dp_sgd_epsilon"] for p in parties)
        out["audit_rows_epsilon_lower_bound"] = max(p["audit_rows_epsilon_lower_bound"] for p in parties)
        out["audit_rows_correct"] = [
            f"{p['audit_rows_correct']:.0f}/{p['audit_rows_guesses']:.0f}" for p in parties
        ]
    return out


def matched_non_members(files: dict[str, Path], label_field: str) -> list[int]:
    """Held-out rows with the members' label shares (as many as the held-out set allows): a membership test
    must not be able to win by telling the members' label mix from the balanced held-out set's."""
    member_labels = [json.loads(x)[label_field] for p in PARTIES for x in files[p].read_text().splitlines()]
    held = [json.loads(x)[label_field] for x in files["held_out"].read_text().splitlines()]
    shares = {label: member_labels.count(label) / len(member_labels) for label in set(member_labels)}
    size = min(int(held.count(label) / share) for label, share in shares.items() if share > 0)
    keep: list[int] = []
    for label, share in sorted(shares.items()):
        keep += [i for i, x in enumerate(held) if x == label][: round(size * share)]
    return sorted(keep)


def matched(losses: dict[str, list[float]], keep: list[int]) -> dict[str, list[float]]:
    return {**losses, "held_out": [losses["held_out"][i] for i in keep]}


def label_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The parties' local recipe (``TrainSettings``' fields) that the label attack's references repeat."""
    from mpctf.config import load_config

    training = load_config(cfg).training
    return {
        "lr": training.lr,
        "weight_decay": training.weight_decay,
        "optimizer": training.optimizer,
        "momentum": training.momentum,
        "micro_batch": training.batch_size,
        "grad_accum": 1,
        "max_steps": training.local_steps,
        "seed": 0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out
    data = out / "data" / "target"
    counts = write_silos(TASKS["movie"], SHARES, args.rows_per_party, args.test_per_label, args.seed, data)
    skew = TASKS["movie"].skew_label
    truth = {p: c[skew] / sum(c.values()) for p, c in counts["parties"].items()}
    refs = [out / "data" / f"reference{i}" for i in range(args.references)]
    for i, folder in enumerate(refs):
        reference_silos(data, folder, args, i)
    public = public_rows(data, out / "data" / "public", args)
    configs = {name: run_config(name, args, data, name) for name in args.configs}
    for name, cfg in configs.items():
        train(cfg, out / name)
    for i, folder in enumerate(refs):
        train(run_config("plain", args, folder, f"reference{i}"), out / f"reference{i}")
    files = {p: data / f"{p}.jsonl" for p in PARTIES} | {"held_out": data / "test.jsonl"}
    keep = matched_non_members(files, TASKS["movie"].label_field)
    references = [
        matched(_audit_attacks.row_losses(out / f"reference{i}", files), keep) for i in range(args.references)
    ]
    results: dict[str, Any] = {"command": command_line(), "machine": machine(), "truth": truth, "runs": {}}
    label_refs = None
    for name, cfg in configs.items():
        row: dict[str, Any] = ledger(out / name)
        if name != "secagg":  # the same model as plain's: secure aggregation hides updates, not the model
            target = matched(_audit_attacks.row_losses(out / name, files), keep)
            row["membership"] = _audit_attacks.membership(target, references, PARTIES, "held_out")
        if name in ("plain", "secagg"):
            if label_refs is None:
                label_refs = _audit_attacks.label_references(out / name, public, label_settings(cfg))
            row["labels"] = _audit_attacks.label_inference(out / name / "captured", label_refs, truth, skew)
        results["runs"][name] = row
        print(name, json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(summary(results))
    plot(results, out / "audit.png")
    print(summary(results))
    return results


def _f(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def summary(results: dict[str, Any]) -> str:
    header = [
        "run", "accuracy", "eval loss", "ledger ε", "audit ε̂ (95 % interval)", "audit lower bound",
        "loss-attack AUC", "LiRA AUC", "LiRA TPR @1 % FPR", "party-level LiRA AUC", "label-share error",
    ]  # fmt: skip
    rows = []
    for name, r in results["runs"].items():
        mia = r.get("membership", {})
        sgd = r.get("dp_sgd_epsilon")
        eps = r.get("dp_epsilon") if sgd is None else sgd
        interval = r.get("audit_epsilon_interval")
        estimate = (
            f"{_f(r['audit_epsilon_estimate'])} ({_f(interval[0])}–{_f(interval[1])})"
            if "audit_epsilon_estimate" in r
            else "—"
        )
        bound = r.get("audit_epsilon_lower_bound", r.get("audit_rows_epsilon_lower_bound"))
        labels = r.get("labels")
        rows.append(
            [
                name,
                _f(r["accuracy"]),
                _f(r["eval_loss"]),
                "∞" if eps is None else _f(eps),
                estimate,
                _f(bound),
                _f(mia.get("loss_auc")),
                _f(mia.get("lira_auc")),
                _f(mia.get("lira_tpr_at_1pct_fpr")),
                _f(mia.get("lira_party_auc")),
                "—"
                if labels is None
                else f"{labels['mean_abs_error']:.3f} (prior {labels['prior_mean_abs_error']:.3f})",
            ]
        )
    return markdown_table(header, rows) + "\n"


def _label_cell(labels: dict[str, Any]) -> str:
    return f"{labels['mean_abs_error']:.3f} (prior {labels['prior_mean_abs_error']:.3f})"


def plot(results: dict[str, Any], path: Path) -> None:
    """Membership AUC against ε beside accuracy against ε (plain drawn at the right edge as ε = ∞)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for name, r in results["runs"].items():
        if "membership" not in r:
            continue
        eps = r.get("dp_sgd_epsilon") or r.get("dp_epsilon")
        points.append(
            (name, eps, r["membership"].get("lira_auc", r["membership"]["loss_auc"]), r["accuracy"])
        )
    finite = [p[1] for p in points if p[1] is not None]
    edge = max(finite) * 4 if finite else 1.0
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, eps, auc, acc in points:
        x = eps if eps is not None else edge
        left.scatter(x, auc)
        left.annotate(name, (x, auc))
        right.scatter(x, acc)
        right.annotate(name, (x, acc))
    for ax, label in ((left, "membership AUC (LiRA offline)"), (right, "held-out accuracy")):
        ax.set_xscale("log")
        ax.set_xlabel("ε (ledger; rightmost: no DP)")
        ax.set_ylabel(label)
    left.axhline(0.5, color="grey", linestyle=":")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
