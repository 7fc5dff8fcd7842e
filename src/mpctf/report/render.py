"""The run report: ``report.md`` with a table per round and per party, and PNG plots of accuracy and loss."""

from __future__ import annotations

from pathlib import Path

from mpctf.errors import DataError
from mpctf.report.guarantee import guarantee_lines
from mpctf.report.metrics import Record, read_metrics, score_cell


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


#: Federated validation's columns (``data.validation``), shown when a round has them.
_VALIDATION = {"val_accuracy": "val accuracy", "val_eval_loss": "val loss"}


def _rounds_table(rounds: list[Record]) -> list[str]:
    validation = [k for k in _VALIDATION if any(k in r for r in rounds)]
    head = "".join(f" {_VALIDATION[k]} |" for k in validation)
    lines = [
        f"| round | accuracy | eval loss |{head} wall s | total down (MB) | total up (MB) | fp32 size ÷ sent |",
        "|---:|---:|---:|" + "---:|" * len(validation) + "---:|---:|---:|---:|",
    ]
    for r in rounds:
        up, fp32 = r.get("cumulative_bytes_up", 0), r.get("cumulative_bytes_up_fp32", 0)
        ratio = f"{fp32 / up:.2f}×" if up and fp32 else "—"
        cells = "".join(f" {score_cell(r, k)} |" for k in validation)
        lines.append(
            f"| {r['round']} | {score_cell(r, 'accuracy')} | {score_cell(r, 'eval_loss')} |{cells} "
            f"{r.get('seconds', 0):.1f} | {_mb(r.get('cumulative_bytes_down', 0))} | {_mb(up)} | {ratio} |"
        )
    return lines


def _validation_lines(records: list[Record]) -> list[str]:
    """The best round by federated validation, and why the run stopped early if it did."""
    end = next((r for r in records if r["event"] == "run_end"), None)
    last = next((r for r in reversed(records) if r["event"] == "round" and "best_round" in r), None)
    best = end if end is not None and "best_round" in end else last
    metric = next((k for k in best if k.startswith("best_val_")), None) if best is not None else None
    if best is None or metric is None:
        return []
    lines = [
        f"Best round by federated validation (the parties' held-out rows, never the test set): "
        f"**{best['best_round']}** ({metric.removeprefix('best_').replace('_', ' ')} {best[metric]:.4f}); "
        "`mpctf export` takes it by default."
    ]
    stop = next((r for r in records if r["event"] == "early_stop"), None)
    if stop is not None:
        lines.append(f"Stopped early after round {stop['round']}: {stop['reason']}.")
    return [*lines, ""]


def _parties_table(parties: list[Record]) -> list[str]:
    lines = [
        "| round | party | status | loss | samples | tokens | train s | round trip s | up (kB) | down (kB) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in parties:
        loss = f"{p['loss']:.4f}" if "loss" in p else "—"
        status = p["status"] if p["status"] == "ok" else f"{p['status']}: {p.get('reason', '')}"
        lines.append(
            f"| {p['round']} | {p['party']} | {status} | {loss} | {p.get('samples', 0)} | {p.get('tokens', 0)} | "
            f"{p.get('train_seconds', 0):.1f} | {p.get('seconds', 0):.1f} | {p.get('bytes_up', 0) / 1e3:.1f} | "
            f"{p.get('bytes_down', 0) / 1e3:.1f} |"
        )
    return lines


def _privacy_section(records: list[Record], rounds: list[Record], parties: list[Record]) -> list[str]:
    """Mechanism, ε per round at δ, why training stopped, and the cost of secure aggregation or CKKS."""
    setup = next((r for r in records if r["event"] == "privacy"), None)
    dpsgd = [p for p in parties if "dp_sgd_epsilon" in p]
    if setup is None and not dpsgd:
        return []
    lines = ["## Privacy", ""]
    if setup is not None:
        lines.append(
            f"Mechanism: {setup['mechanism']}; parties sampled per round at rate q = {setup['sampling_rate']:g}."
        )
        if "delta" in setup:
            budget = setup.get("epsilon_max")
            lines.append(
                f"Client-level DP: noise multiplier {setup['noise_multiplier']:g}, δ = {setup['delta']:g}"
                + (
                    f", budget ε ≤ {budget:g} ({setup['max_rounds_within_budget']} rounds)."
                    if budget
                    else "."
                )
            )
        if "homomorphic_encryption_setup_seconds" in setup:
            lines.append(
                f"CKKS key setup (party {setup['he_key_holder']} sealed the secret context to the others): "
                f"{setup['homomorphic_encryption_setup_seconds']:.1f} s, "
                f"{_mb(setup['homomorphic_encryption_setup_bytes'])} MB, public context "
                f"{_mb(setup['he_public_context_bytes'])} MB."
            )
        lines += [
            "",
            "| round | ε (client DP) | clip norm | exchange s | server s | exchange up (kB) | exchange down (kB) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rounds:
            if "privacy_exchange_seconds" not in r:
                continue
            eps = f"{r['dp_epsilon']:.3f}" if "dp_epsilon" in r else "—"
            clip = f"{r['dp_clip_norm']:.4g}" if "dp_clip_norm" in r else "—"
            lines.append(
                f"| {r['round']} | {eps} | {clip} | {r['privacy_exchange_seconds']:.2f} | "
                f"{r['privacy_server_seconds']:.2f} | {r['privacy_exchange_bytes_up'] / 1e3:.1f} | "
                f"{r['privacy_exchange_bytes_down'] / 1e3:.1f} |"
            )
        lines.append("")
    hidden = [p for p in parties if "privacy_seconds" in p]
    if hidden:
        mean = sum(p["privacy_seconds"] for p in hidden) / len(hidden)
        lines += [f"Masking or encryption at a party: {mean:.2f} s per update on average.", ""]
    if dpsgd:
        lines += [
            "Sample-level DP-SGD, ε per party after each round: "
            + ", ".join(f"{p['party']} r{p['round']} {p['dp_sgd_epsilon']:.3f}" for p in dpsgd)
            + ".",
            "",
        ]
    stop = next((r for r in records if r["event"] == "privacy_stop"), None)
    if stop is not None:
        lines += [f"Training stopped before round {stop['round']}: {stop['reason']}.", ""]
    return lines[:2] + guarantee_lines(setup, rounds, parties) + lines[2:]


def _plot(rounds: list[Record], parties: list[Record], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, label in (("accuracy", "held-out test"), ("val_accuracy", "federated validation")):
        scored = [r for r in rounds if key in r]
        if scored:
            ax.plot([r["round"] for r in scored], [r[key] for r in scored], marker="o", label=label)
    if any("val_accuracy" in r for r in rounds):
        ax.legend(fontsize=7)
    ax.set(xlabel="round", ylabel="accuracy", title="Global accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    written.append("accuracy.png")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    scored = [r for r in rounds if "eval_loss" in r]
    ax.plot([r["round"] for r in scored], [r["eval_loss"] for r in scored], marker="o", label="eval (global)")
    validated = [r for r in rounds if "val_eval_loss" in r]
    if validated:
        ax.plot(
            [r["round"] for r in validated],
            [r["val_eval_loss"] for r in validated],
            marker="s",
            label="federated validation",
        )
    for name in sorted({p["party"] for p in parties}):
        mine = [p for p in parties if p["party"] == name and "loss" in p]
        ax.plot(
            [p["round"] for p in mine],
            [p["loss"] for p in mine],
            marker=".",
            alpha=0.7,
            label=f"train {name}",
        )
    ax.set(xlabel="round", ylabel="loss", title="Loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
    written.append("loss.png")
    return written


def render_report(run_dir: Path, *, strict: bool = False) -> Path:
    """(Re)write ``report.md`` and its plots from ``metrics.jsonl``; returns the report's path.

    ``strict``: a metrics file with an unreadable line, no record, or a record of the wrong shape is a
    :class:`DataError` (naming ``file:line`` where it can) instead of a report of what could be read."""
    metrics = run_dir / "metrics.jsonl"
    records = read_metrics(metrics, strict=strict)
    try:
        lines = _report_lines(run_dir, records)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if not strict:
            raise
        raise DataError(
            f"{metrics}: a record has a missing or mistyped field ({type(exc).__name__}: {exc})"
        ) from None
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _report_lines(run_dir: Path, records: list[Record]) -> list[str]:
    rounds = [r for r in records if r["event"] == "round"]
    parties = [r for r in records if r["event"] == "party_round"]
    plans = [r for r in records if r["event"] == "plan"]
    start = next((r for r in records if r["event"] == "run_start"), {})
    lines = [f"# Run report: {start.get('name', run_dir.name)}", ""]
    if rounds:
        scored = [r for r in rounds if "accuracy" in r] or rounds
        first, last = scored[0], rounds[-1]
        lines += [
            f"Accuracy {score_cell(first, 'accuracy')} at round {first['round']} → {score_cell(last, 'accuracy')} at "
            f"round {last['round']}. Bytes moved: {_mb(last.get('cumulative_bytes_down', 0))} MB down, "
            f"{_mb(last.get('cumulative_bytes_up', 0))} MB up. Server model load: "
            f"{start.get('server_model_load_seconds', 0):.1f} s.",
            "",
        ]
    lines += _validation_lines(records)
    if plans:
        lines += [
            "## Data plan",
            "",
            "| party | samples | tokens | chunk | micro-batch | accumulation | rounds/epoch |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {p['party']} | {p['num_samples']} | {p['num_tokens']} | {p['chunk_samples']} | {p['micro_batch']} | "
            f"{p['grad_accum']} | {p['rounds_per_epoch']} |"
            for p in plans
        ]
        lines.append("")
    lines += ["## Rounds", "", *_rounds_table(rounds), "", "## Parties", "", *_parties_table(parties), ""]
    lines += _privacy_section(records, rounds, parties)
    loads = [p for p in parties if "model_load_seconds" in p]
    if loads:
        lines += [
            "Model load per party process (once per run): "
            + ", ".join(f"{p['party']} {p['model_load_seconds']:.1f} s" for p in loads),
            "",
        ]
    if rounds:
        lines += [f"![{name}]({name})" for name in _plot(rounds, parties, run_dir)]
    return lines
