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
from mpctf.errors import ConfigError
from mpctf.launch.flower_local import launch_flower_local, launch_flower_server, serve_flower_party
from mpctf.launch.flower_services import PartySpec
from mpctf.report.metrics import MetricsTail, Record, read_metrics
from mpctf.runtime.flower.commands import ServerTls
from mpctf.server.loop import RunResult

DRIVER = "mpctf.server.entry:drive"
HANDLER_FACTORY = "mpctf.party.worker:make_handler"


def party_threads(config: RunConfig, parties_on_host: int) -> int:
    """Torch threads per party process: the configured number, or this host's cores shared evenly."""
    if config.training.threads is not None:
        return config.training.threads
    return max(1, (os.cpu_count() or 1) // max(parties_on_host, 1))


def _party_spec(config: RunConfig, config_path: Path, party: str, parties_on_host: int) -> PartySpec:
    threads = str(party_threads(config, parties_on_host))
    return PartySpec(
        name=party, handler_kwargs={"config": str(config_path), "party": party, "threads": threads}
    )


def _settings(config_path: Path, run_dir: Path, resume: bool) -> dict[str, str]:
    return {"config-path": str(config_path), "run-dir": str(run_dir), "resume": "true" if resume else "false"}


def _result(run_dir: Path, resume: bool) -> RunResult:
    records = read_metrics(run_dir / "metrics.jsonl")
    # On resume, only the rounds this launch ran, as on the local backend.
    starts = [i for i, r in enumerate(records) if r["event"] == "run_start"]
    first = starts[-1] if resume and starts else 0
    return RunResult(run_dir, [r for r in records[first:] if r["event"] == "round"])


def prepare_run_dir(config: RunConfig, run_dir: Path, resume: bool) -> Path:
    """Create the run directory and record the config every party process reads (kept as it is on resume)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if not resume:
        config_path.write_text(dump_config(config))
    return config_path


def serve_server(
    config: RunConfig,
    run_dir: Path,
    *,
    host: str,
    port: int,
    tls: ServerTls | None,
    party_public_keys: dict[str, Path] | None,
    resume: bool,
    listeners: list[Callable[[Record], None]],
) -> RunResult:
    """The server side alone (``mpctf server``): the run starts once ``federation.min_parties`` have joined.

    With ``party_public_keys`` only those parties' SuperNodes may join (Flower node authentication).
    """
    config_path = prepare_run_dir(config, run_dir, resume)
    tail = MetricsTail(run_dir / "metrics.jsonl", listeners)
    launch_flower_server(
        run_dir,
        DRIVER,
        _settings(config_path, run_dir, resume),
        min_parties=config.federation.min_parties,
        host=host,
        port=port,
        tls=tls,
        party_public_keys=party_public_keys,
        party_wait_s=config.federation.round_timeout_s,
        on_tick=tail.poll,
    )
    tail.poll()
    return _result(run_dir, resume)


def serve_party(
    config: RunConfig,
    party: str,
    work_dir: Path,
    *,
    superlink: str,
    root_cert: Path | None,
    auth_key: Path | None,
    server_wait_s: float = 600.0,
    say: Callable[[str], None] | None = None,
) -> None:
    """One party alone (``mpctf party``): its worker and SuperNode, until the federation ends.

    Gives up when the server has not answered within ``server_wait_s``, or keeps refusing this party's key for
    ``min(server_wait_s, 60)`` seconds after it answered; ``say`` gets the lines that tell the user what it waits for.
    """
    if party not in config.party_names:
        raise ConfigError(
            f"--name: party {party!r} is not in the config; parties: {', '.join(config.party_names)}"
        )
    # Absolute: the party's processes run in their own folders and must find its files from there.
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / "config.yaml"
    config_path.write_text(dump_config(config))
    spec = _party_spec(config, config_path, party, parties_on_host=1)
    serve_flower_party(
        work_dir,
        spec,
        superlink=superlink,
        handler_factory=HANDLER_FACTORY,
        root_cert=root_cert.resolve() if root_cert is not None else None,
        auth_key=auth_key.resolve() if auth_key is not None else None,
        server_wait_s=server_wait_s,
        key_grace_s=min(server_wait_s, 60.0),
        say=say,
    )


def run_flower(
    config: RunConfig, run_dir: Path, *, resume: bool, listeners: list[Callable[[Record], None]]
) -> RunResult:
    """Start SuperLink, party workers and SuperNodes here, run every round, tear all down.

    Parties that name a ``host`` are started there over SSH (:mod:`mpctf.launch.remote`).
    """
    if any(p.host is not None for p in config.parties):
        from mpctf.launch.remote import run_with_hosts

        config_path = prepare_run_dir(config, run_dir, resume)
        settings = _settings(config_path, run_dir, resume)
        return run_with_hosts(
            config,
            run_dir,
            config_path,
            settings,
            driver=DRIVER,
            handler_factory=HANDLER_FACTORY,
            listeners=listeners,
        )
    config_path = prepare_run_dir(config, run_dir, resume)
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
