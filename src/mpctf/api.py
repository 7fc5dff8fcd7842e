"""``mpctf.run``: validate a config, start the federation on its backend, return the results."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpctf.config import RunConfig, load_config
from mpctf.report.metrics import Record
from mpctf.report.render import render_report
from mpctf.server.loop import RunResult


def new_run_dir(config: RunConfig) -> Path:
    """``output_dir/<name>-<UTC timestamp>``, never an existing folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = config.output_dir / f"{config.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run_local(
    config: RunConfig, run_dir: Path, *, resume: bool, listeners: list[Callable[[Record], None]]
) -> RunResult:
    """All parties in this process, sharing one loaded model (each loads the global state before training)."""
    from mpctf.aggregation import STRATEGIES
    from mpctf.config import resolve_spec
    from mpctf.model.bundle import ModelBundle
    from mpctf.party.worker import PartyWorker
    from mpctf.runtime.local import LocalBackend
    from mpctf.server.loop import RoundLoop

    server = ModelBundle.load(config)
    # Parties with the same training settings share one loaded model (a heterogeneous rank needs its own), unless
    # the strategy has every party add the global adapter into its own base weights: each then needs its own base.
    strategy_cls, _ = resolve_spec(STRATEGIES, config.federation.strategy, "federation.strategy")
    shared = not strategy_cls.merges_into_base
    bundles = {config.training.model_dump_json(): server} if shared else {}
    workers: list[PartyWorker] = []
    # Success, an error and Ctrl-C all stop the parties' extra training processes (processes_per_party > 1).
    try:
        for party in config.party_names:
            training = config.party_training(party)
            key = training.model_dump_json() if shared else party
            if key not in bundles:
                bundles[key] = ModelBundle.load(config, training)
            workers.append(PartyWorker(config, party, bundle=bundles[key]))
        handlers = {w.party: w.handle for w in workers}
        loop = RoundLoop(config, LocalBackend(handlers), run_dir, bundle=server, listeners=listeners)
        return loop.run(resume=resume)
    finally:
        for worker in workers:
            worker.close()


def run(
    config: str | Path | dict[str, Any] | RunConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    listeners: list[Callable[[Record], None]] | None = None,
) -> RunResult:
    """Run a whole federation and return its :class:`RunResult` (per-round accuracy, loss, bytes).

    ``config`` is a YAML path, a dict, or a validated :class:`RunConfig`. With ``resume=True`` the run continues
    in ``run_dir`` from its last completed round.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    target = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    if cfg.backend.name == "flower":
        from mpctf.launch.federation import run_flower

        result = run_flower(cfg, target, resume=resume, listeners=listeners or [])
    elif cfg.backend.name == "processes":
        from mpctf.launch.workers import run_processes

        result = run_processes(cfg, target, resume=resume, listeners=listeners or [])
    else:
        result = run_local(cfg, target, resume=resume, listeners=listeners or [])
    render_report(target)
    return result
