"""Run a federation on the ``processes`` backend: every party in its own long-lived worker process on this host.

The round loop runs in this process; each party's worker (``mpctf.party.worker:make_handler`` behind
:mod:`mpctf.runtime.party_link`) loads the model once and serves rounds. No Flower: fewer processes and no
polling floor, and real process boundaries, so a party can crash, hang or be killed without taking the run down.

A worker that dies is started again (same command, same log) when the next round begins, up to
:data:`MAX_RESTARTS` times per party; once its model is loaded the party is back in the round after. The round it
died in completes with the other parties when at least ``federation.min_parties`` of them answered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mpctf.config import RunConfig
from mpctf.errors import LaunchError
from mpctf.launch.flower_services import PartySpec, start_worker, wait_until
from mpctf.launch.processes import ProcessGroup, describe_exit, signals_raise
from mpctf.report.metrics import Record
from mpctf.runtime.party_link import read_authkey
from mpctf.runtime.workers import WorkerBackend
from mpctf.server.loop import RunResult

HANDLER_FACTORY = "mpctf.party.worker:make_handler"
#: Restarts of one party's worker in one launch; a party that keeps dying is then left out with a warning.
MAX_RESTARTS = 5

log = logging.getLogger("mpctf.launch.workers")


@dataclass
class WorkerPool:
    """One worker process per party in ``group``; restarts the dead ones and says which are ready."""

    run_dir: Path
    group: ProcessGroup
    parties: list[PartySpec]
    handler_factory: str = HANDLER_FACTORY
    max_restarts: int = MAX_RESTARTS
    restarts: dict[str, int] = field(default_factory=dict)

    def start_all(self) -> None:
        for party in self.parties:
            start_worker(self.run_dir, self.group, party, self.handler_factory)

    def folder(self, party: str) -> Path:
        return self.run_dir / "parties" / party

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every worker has loaded its model; ``LaunchError`` if one dies first."""
        names = [p.name for p in self.parties]
        wait_until(lambda: len(self.roster()) == len(names), self.group, timeout_s, "every party worker")

    def roster(self) -> dict[str, tuple[str, bytes]]:
        """``party → (address, authkey)`` of the workers ready now; restarts those that have died."""
        ready: dict[str, tuple[str, bytes]] = {}
        exited = self.group.exited()
        for party in self.parties:
            name = f"worker-{party.name}"
            if name in exited:
                self._restart(party.name, exited[name])
                continue
            address = self._ready_address(party.name)
            if address is not None:
                ready[party.name] = (address, read_authkey(self.folder(party.name) / "authkey"))
        return ready

    def _ready_address(self, party: str) -> str | None:
        try:
            marker = json.loads((self.folder(party) / "worker.json").read_text())
        except (OSError, ValueError):
            return None
        # A marker left by an earlier process of this party is not this one's.
        current = next(c for c in self.group.children() if c.name == f"worker-{party}")
        return str(marker["address"]) if marker.get("pid") == current.pid else None

    def _restart(self, party: str, code: int) -> None:
        child = next(c for c in self.group.children() if c.name == f"worker-{party}")
        done = self.restarts.get(party, 0)
        if done >= self.max_restarts:
            return
        log.warning("%s; restarting it (%d of %d)", describe_exit(child, code), done + 1, self.max_restarts)
        self.restarts[party] = done + 1
        (self.folder(party) / "worker.json").unlink(missing_ok=True)
        self.group.restart(child.name)


def run_processes(
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool,
    listeners: list[Callable[[Record], None]],
    handler_factory: str = HANDLER_FACTORY,
    startup_timeout_s: float = 600.0,
) -> RunResult:
    """Start one worker per party, run every round from this process, stop the workers whatever happens."""
    from mpctf.launch.federation import party_threads, prepare_run_dir
    from mpctf.model.bundle import ModelBundle
    from mpctf.server.loop import RoundLoop, max_reply_bytes

    config_path = prepare_run_dir(config, run_dir, resume)
    threads = str(party_threads(config, len(config.parties)))
    parties = [
        PartySpec(p, {"config": str(config_path), "party": p, "threads": threads}, {"PYTHONUNBUFFERED": "1"})
        for p in config.party_names
    ]
    with signals_raise(), ProcessGroup(run_dir / "logs") as group:
        pool = WorkerPool(run_dir, group, parties, handler_factory)
        pool.start_all()  # the workers load their models while this process loads the server's
        bundle = ModelBundle.load(config)
        limit = max_reply_bytes(config, bundle.mode.get_state(bundle.model))
        try:
            pool.wait_ready(startup_timeout_s)
        except LaunchError as exc:
            raise LaunchError(f"a party worker did not start: {exc}") from None
        backend = WorkerBackend(pool.roster, max_reply_bytes=limit)
        return RoundLoop(config, backend, run_dir, bundle=bundle, listeners=listeners).run(resume=resume)
