"""Run a configured federation on the Flower backend, all on this host, and return its results.

The round loop runs inside Flower's ServerApp process (``mpctf.server.entry:drive``); each party runs in a
long-lived worker (``mpctf.party.worker:make_handler``) behind its SuperNode. Progress reaches this process by
tailing the run's ``metrics.jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mpctf.config import RunConfig, dump_config
from mpctf.launch.flower_local import launch_flower_local
from mpctf.launch.flower_services import PartySpec
from mpctf.report.metrics import MetricsTail, Record, read_metrics
from mpctf.server.loop import RunResult

DRIVER = "mpctf.server.entry:drive"
HANDLER_FACTORY = "mpctf.party.worker:make_handler"


def party_threads(config: RunConfig, parties_on_host: int) -> int:
    """Torch threads per party process: the configured number, or this host's cores shared evenly."""
    if config.training.threads is not None:
        return config.training.threads
    return max(1, (os.cpu_count() or 1) // max(parties_on_host, 1))


def run_flower(
    config: RunConfig, run_dir: Path, *, resume: bool, listeners: list[Callable[[Record], None]]
) -> RunResult:
    """Start SuperLink, party workers and SuperNodes here, run every round, tear all down."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if not resume:
        config_path.write_text(dump_config(config))
    threads = str(party_threads(config, len(config.parties)))
    parties = [
        PartySpec(
            name=p.name, handler_kwargs={"config": str(config_path), "party": p.name, "threads": threads}
        )
        for p in config.parties
    ]
    tail = MetricsTail(run_dir / "metrics.jsonl", listeners)
    settings = {
        "config-path": str(config_path),
        "run-dir": str(run_dir),
        "resume": "true" if resume else "false",
    }
    launch_flower_local(
        run_dir,
        parties,
        DRIVER,
        settings,
        handler_factory=HANDLER_FACTORY,
        on_tick=tail.poll,
    )
    tail.poll()
    records = read_metrics(run_dir / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round"]
    if resume:
        # Only the rounds this launch ran, as on the local backend.
        started = max(i for i, r in enumerate(records) if r["event"] == "run_start")
        rounds = [r for r in records[started:] if r["event"] == "round"]
    return RunResult(run_dir, rounds)
