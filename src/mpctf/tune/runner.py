"""Run a successive-halving search: every trial is a real federation on the config's backend.

A trial is scored by federated validation only (the parties' held-out rows; the server's test set is reported
but never used to choose), so nothing but metrics leaves a party. A surviving trial continues from its own last
checkpoint into the next rung (``resume``), so the search costs the rounds it runs and no more: with 8 trials,
eta 2 and 4 rounds, 8 × 1 + 4 × 1 + 2 × 2 = 16 rounds, 4 times one run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpctf.config import RunConfig, dump_yaml, load_config
from mpctf.errors import ConfigError
from mpctf.report.metrics import read_metrics
from mpctf.server.validation import PREFIX
from mpctf.tune.search import Trial, apply_overrides, grid, keep, rung_rounds


@dataclass
class TuneResult:
    best: Trial
    trials: list[Trial]
    #: Rounds run over all trials, and that divided by one run's ``federation.rounds``.
    rounds_run: int
    compute_ratio: float
    best_config: Path
    table: Path


def check_tunable(config: RunConfig) -> None:
    """``ConfigError`` unless the config can be tuned: a ``tune`` section, federated validation, no privacy."""
    if config.tune is None:
        raise ConfigError("mpctf tune: the config has no `tune:` section; list what to try in tune.space")
    if enabled := config.privacy.enabled():
        raise ConfigError(
            f"mpctf tune: choosing among trials by the parties' validation scores spends privacy that "
            f"privacy.{enabled[0]}'s ledger does not account for; tune without it (on data you may spend), "
            "then run the winning config with it"
        )
    if config.data.validation is None:
        raise ConfigError(
            "mpctf tune scores trials by federated validation on the parties' own rows; add data.validation"
        )


def trial_configs(config: RunConfig) -> tuple[dict[str, Any], list[Trial]]:
    """The base config (resolved, without ``tune``, without early stopping) and the trials, each checked."""
    assert config.tune is not None
    base = config.model_dump(mode="json", exclude={"tune"})
    # A trial runs the rounds its rung gives it: patience would cut rungs short unevenly.
    base["data"]["validation"]["patience"] = None
    trials = []
    for number, overrides in enumerate(grid(config.tune.space, config.tune.trials, config.seed), start=1):
        trial = Trial(number, overrides)
        try:
            load_config(apply_overrides(base, overrides))
        except (ConfigError, ValueError) as exc:
            settings = ", ".join(f"{k}={v}" for k, v in overrides.items())
            raise ConfigError(f"tune.space: trial {number} ({settings}): {exc}") from None
        trials.append(trial)
    return base, trials


def run_search(
    config: RunConfig, out: Path, *, progress: Callable[[str], None] = lambda _: None
) -> TuneResult:
    """Successive halving over ``config.tune``; trial runs go under ``out``, with ``best.yaml`` and a table."""
    import mpctf
    from mpctf.data.task_base import TASKS

    check_tunable(config)
    assert config.tune is not None
    task = TASKS.get(config.task.type)
    metric = PREFIX + task.selection_metric
    base, trials = trial_configs(config)
    schedule = rung_rounds(config.tune.min_rounds, config.tune.eta, config.federation.rounds, len(trials))
    out.mkdir(parents=True, exist_ok=True)
    alive, rounds_run = trials, 0
    test: dict[int, float | None] = {}
    for k, rounds in enumerate(schedule):
        for trial in alive:
            trial_config = apply_overrides(base, {**trial.overrides, "federation.rounds": rounds})
            trial_config["name"] = f"{config.name}-{trial.name}"
            run_dir = out / trial.name
            done = trial.scores[-1][0] if trial.scores else 0
            mpctf.run(trial_config, run_dir=run_dir, resume=done > 0)
            rounds_run += rounds - done
            score, test[trial.number] = _scores(run_dir, rounds, metric, task.higher_is_better)
            trial.scores.append((rounds, score))
            progress(
                f"rung {k + 1}/{len(schedule)}: {trial.name} ({_settings(trial)}) after {rounds} rounds: "
                f"{metric.replace('_', ' ')} {score:.4f}"
            )
        alive = keep(alive, config.tune.eta, task.higher_is_better, last_rung=k == len(schedule) - 1)
    best = alive[0]
    best_config = out / "best.yaml"
    best_config.write_text(dump_yaml(apply_overrides(base, best.overrides)))
    table = _write_table(out, trials, schedule, metric, test)
    (out / "search.json").write_text(
        json.dumps(
            {
                "space": config.tune.space,
                "schedule": schedule,
                "best": best.name,
                "rounds_run": rounds_run,
                "trials": [{"name": t.name, "overrides": t.overrides, "scores": t.scores} for t in trials],
            },
            indent=1,
        )
    )
    return TuneResult(best, trials, rounds_run, rounds_run / config.federation.rounds, best_config, table)


def _scores(run_dir: Path, rounds: int, metric: str, higher_is_better: bool) -> tuple[float, float | None]:
    """The trial's validation score at round ``rounds`` (the worst possible when no party reported) and its
    test accuracy there (reported, never used to choose)."""
    record = next(
        (
            r
            for r in read_metrics(run_dir / "metrics.jsonl")
            if r["event"] == "round" and r["round"] == rounds
        ),
        {},
    )
    worst = float("-inf") if higher_is_better else float("inf")
    return float(record.get(metric, worst)), record.get("accuracy")


def _settings(trial: Trial) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in trial.overrides.items())


def _write_table(
    out: Path, trials: list[Trial], schedule: list[int], metric: str, test: dict[int, float | None]
) -> Path:
    """``trials.csv`` and ``trials.md``: every trial's settings and its validation score after each rung."""
    rung = [f"{metric} @ {r} round{'s' if r > 1 else ''}" for r in schedule]
    test_key = "test accuracy at its last round (not used to choose)"
    rows = [
        {
            "trial": t.name,
            **{k: json.dumps(v) for k, v in t.overrides.items()},
            **{rung[schedule.index(r)]: f"{s:.4f}" for r, s in t.scores},
            test_key: f"{test[t.number]:.4f}" if test.get(t.number) is not None else "",
        }
        for t in trials
    ]
    keys = ["trial", *dict.fromkeys(k for t in trials for k in t.overrides), *rung, test_key]
    with (out / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(row.get(k, "") for k in keys) + " |" for row in rows]
    path = out / "trials.md"
    path.write_text(
        f"Successive halving, rounds per rung {schedule}; scored by {metric} (federated validation).\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return path
