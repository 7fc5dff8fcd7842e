"""Run a federation on Flower: everything on this host, or the server side and each party started apart.

:func:`launch_flower_local` starts the SuperLink, one worker and one SuperNode per party, waits until every
party is online, submits the run with ``flwr run``, calls ``on_tick`` about once a second while the run goes on,
saves the ServerApp's log to ``RUN_DIR/logs/serverapp.log`` and stops every process, whether the run succeeded,
failed, or was interrupted (Ctrl-C, SIGTERM, SIGHUP). :func:`launch_flower_server` and :func:`serve_flower_party`
are the two halves of the same launch for ``mpctf server`` and ``mpctf party`` on separate hosts.

A process that fails to start or dies raises :class:`~mpctf.errors.LaunchError` naming it and quoting the end of
its log; a run that does not complete raises the driver's own error, or :class:`~mpctf.errors.FederationError`.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mpctf.errors import ConfigError, FederationError, LaunchError
from mpctf.launch.flower_services import (
    CLI_TIMEOUT_S,
    PartySpec,
    SuperLink,
    child_env,
    flwr,
    online_parties,
    revive_workers,
    start_party,
    start_superlink,
    start_supernode,
    start_worker,
    superlink_healthy,
    wait_until,
    wait_worker,
)
from mpctf.launch.processes import ProcessGroup, read_end, signals_raise
from mpctf.runtime.flower import commands, protocol
from mpctf.runtime.flower.commands import PartyKey, RunStatus, ServerTls

Tick = Callable[[], None]

log = logging.getLogger("mpctf.launch")

#: How often ``on_tick`` is called while a run goes on, and the longest pause between two run-status asks.
TICK_S = 1.0
#: Pause before starting again a SuperNode that the SuperLink refused during startup.
RETRY_S = 2.0
STATUS_EVERY_MAX_S = 10.0


@dataclass(frozen=True)
class FlowerRunResult:
    """How a Flower run ended."""

    run_id: str
    status: str
    seconds: float
    #: Bytes the SuperLink counted in and out for the run, as ``flwr ls`` reports them.
    total_bytes: int | None
    serverapp_log: Path
    #: Processes that had ended before the teardown (a crashed party, for example), with their exit codes.
    exited: dict[str, int]


def launch_flower_local(
    run_dir: Path,
    parties: list[PartySpec],
    driver: str,
    settings: Mapping[str, str],
    *,
    handler_factory: str,
    startup_timeout_s: float = 600.0,
    on_tick: Tick | None = None,
    tls: ServerTls | None = None,
    party_keys: Mapping[str, PartyKey] | None = None,
    grace_s: float = 5.0,
) -> FlowerRunResult:
    """Start a whole federation on this host, run ``driver`` in its ServerApp, tear everything down.

    ``driver`` is ``package.module:function`` called as ``driver(backend, dict(settings))`` once all parties are
    online; ``handler_factory`` is ``package.module:function`` called once in each party worker with that
    party's ``handler_kwargs`` to build its request handler. ``startup_timeout_s`` bounds each startup wait
    (model loading in the workers included). ``tls`` encrypts every connection to the SuperLink;
    ``party_keys`` (one per party) makes the SuperLink accept only those parties' SuperNodes.
    """
    names = [p.name for p in parties]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"parties must be at least one, with unique names; got {names}")
    if party_keys is not None and (missing := sorted(set(names) - set(party_keys))):
        raise ConfigError(f"no authentication key for parties {missing}")
    keys = party_keys or {}
    public_keys = {name: key.public_key for name, key in keys.items()} if party_keys is not None else None
    with signals_raise(), ProcessGroup(run_dir / "logs", grace_s=grace_s) as group:
        link = start_superlink(run_dir, group, tls=tls, party_public_keys=public_keys)
        # Every worker starts loading its model before the first is waited for.
        ready = {p.name: start_worker(run_dir, group, p, handler_factory) for p in parties}
        for name, ready_file in ready.items():
            address = wait_worker(group, name, ready_file, startup_timeout_s)
            private_key = keys[name].private_key if name in keys else None
            start_supernode(
                run_dir, group, name, link.address, address, root_cert=link.root_cert, auth_key=private_key
            )
        wait_until(
            lambda: online_parties(link) >= len(parties),
            group,
            startup_timeout_s,
            f"{len(parties)} SuperNodes to be online",
            every_s=1.0,
        )
        return run_federation(
            run_dir,
            group,
            link,
            driver,
            settings,
            min_parties=len(parties),
            party_wait_s=startup_timeout_s,
            on_tick=reviving(group, on_tick),
        )


def launch_flower_server(
    run_dir: Path,
    driver: str,
    settings: Mapping[str, str],
    *,
    min_parties: int,
    host: str = "0.0.0.0",
    port: int = 9093,
    tls: ServerTls | None = None,
    party_public_keys: Mapping[str, Path] | None = None,
    party_wait_s: float = 600.0,
    on_tick: Tick | None = None,
    grace_s: float = 5.0,
) -> FlowerRunResult:
    """The server side of a split launch: a SuperLink on ``host:port`` and the run, once ``min_parties`` joined.

    The parties join with :func:`serve_flower_party` from their own hosts, before or after this starts; the
    ServerApp waits up to ``party_wait_s`` for them. With ``party_public_keys`` (party name → OpenSSH public
    key) only those parties may join.
    """
    with signals_raise(), ProcessGroup(run_dir / "logs", grace_s=grace_s) as group:
        link = start_superlink(
            run_dir, group, host=host, port=port, tls=tls, party_public_keys=party_public_keys
        )
        return run_federation(
            run_dir,
            group,
            link,
            driver,
            settings,
            min_parties=min_parties,
            party_wait_s=party_wait_s,
            on_tick=on_tick,
        )


def serve_flower_party(
    run_dir: Path,
    party: PartySpec,
    *,
    superlink: str,
    handler_factory: str,
    root_cert: Path | None = None,
    auth_key: Path | None = None,
    startup_timeout_s: float = 600.0,
    server_wait_s: float = 600.0,
    key_grace_s: float = 60.0,
    reconnect_s: float = 60.0,
    on_tick: Tick | None = None,
    say: Callable[[str], None] | None = None,
    grace_s: float = 5.0,
) -> None:
    """One party of a split launch: its worker and SuperNode, served until the federation is gone.

    Once the worker has loaded (within ``startup_timeout_s``), says that it waits for the SuperLink at
    ``superlink`` and waits up to ``server_wait_s`` for it to answer, then serves until it has stopped answering
    for ``reconnect_s`` (the server's run is over, or its host is lost) and returns. A SuperNode the SuperLink
    refuses is started again for ``key_grace_s`` after the SuperLink first answered (the server registers the
    parties' keys just after it starts), then the party gives up. ``root_cert`` is the CA certificate of a TLS
    SuperLink, ``auth_key`` this party's private key when the SuperLink authenticates parties. ``say`` (default:
    the log) gets one line per step the user should see.
    ``LaunchError`` if the worker or the SuperNode dies or the SuperLink never answers, ``FederationError`` if
    it keeps refusing this party, :class:`~mpctf.errors.Interrupted` on Ctrl-C or SIGTERM.
    """
    say = say or log.info
    with signals_raise(), ProcessGroup(run_dir / "logs", grace_s=grace_s) as group:
        say(f"party {party.name!r}: starting its worker (logs in {group.log_dir})")
        start_party(
            run_dir,
            group,
            party,
            superlink=superlink,
            handler_factory=handler_factory,
            root_cert=root_cert,
            auth_key=auth_key,
            startup_timeout_s=startup_timeout_s,
        )
        watch = _PartyWatch(group, party.name, superlink, auth_key, say, server_wait_s, key_grace_s)
        reachable = partial(superlink_healthy, superlink, root_cert)
        watch.serve_until_gone(reachable, reconnect_s, on_tick)


@dataclass
class _PartyWatch:
    """Keeps a party's processes up while its SuperLink answers, and says why the party ends if it cannot join."""

    group: ProcessGroup
    party: str
    superlink: str
    auth_key: Path | None
    say: Callable[[str], None]
    server_wait_s: float
    key_grace_s: float
    first_seen: float | None = None
    told_refused: bool = False

    def serve_until_gone(
        self, reachable: Callable[[], bool], reconnect_s: float, on_tick: Tick | None
    ) -> None:
        """Serve until the SuperLink, once seen, has been silent for ``reconnect_s``."""
        self.say(
            f"party {self.party!r}: waiting for the server at {self.superlink} "
            f"(giving up after {self.server_wait_s:g} s)"
        )
        started = time.monotonic()
        last_seen: float | None = None
        restarts: dict[str, int] = {}
        while last_seen is None or time.monotonic() - last_seen < reconnect_s:
            self._retry_refused()
            revive_workers(self.group, restarts)
            self.group.check()
            if reachable():
                last_seen = time.monotonic()
                if self.first_seen is None:
                    self.first_seen = last_seen
                    self.say(f"party {self.party!r}: the server at {self.superlink} answered; joining")
            elif last_seen is None and time.monotonic() - started >= self.server_wait_s:
                raise LaunchError(
                    f"party {self.party!r}: the server at {self.superlink} did not answer within "
                    f"{self.server_wait_s:g} s"
                )
            if on_tick is not None:
                on_tick()
            time.sleep(TICK_S)

    def _retry_refused(self) -> None:
        """Start again a SuperNode the SuperLink refused, while the server may still be registering keys."""
        supernode = f"supernode-{self.party}"
        if supernode not in self.group.exited():
            return
        if not commands.supernode_refused(read_end(self.group.log_dir / f"{supernode}.log")):
            return  # died for another reason: group.check() reports it
        if self.first_seen is not None and time.monotonic() - self.first_seen >= self.key_grace_s:
            raise FederationError(self._refused())
        if not self.told_refused:
            self.told_refused = True
            self.say(
                f"{self._refused()}; trying again until {self.key_grace_s:g} s after the server first answered "
                "(it registers the parties' keys just after it starts)"
            )
        time.sleep(RETRY_S)
        self.group.restart(supernode)

    def _refused(self) -> str:
        what = (
            f"this party's key {self.auth_key} (not registered there, or in use by another SuperNode)"
            if self.auth_key
            else "this party (no key)"
        )
        return f"party {self.party!r}: the server at {self.superlink} refused {what}"


def reviving(group: ProcessGroup, on_tick: Tick | None) -> Tick:
    """``on_tick`` that first restarts the party workers that died (the party rejoins once it is loaded)."""
    restarts: dict[str, int] = {}

    def tick() -> None:
        revive_workers(group, restarts)
        if on_tick is not None:
            on_tick()

    return tick


def run_federation(
    run_dir: Path,
    group: ProcessGroup,
    link: SuperLink,
    driver: str,
    settings: Mapping[str, str],
    *,
    min_parties: int,
    party_wait_s: float,
    on_tick: Tick | None = None,
) -> FlowerRunResult:
    """Submit the run to ``link``, follow it to its end, save the ServerApp log; raise if it did not complete."""
    config_file = run_dir / "flower" / "run-config.toml"
    config_file.write_text(
        protocol.run_config(
            driver, settings, min_parties=min_parties, party_wait_s=party_wait_s, party_nodes=link.party_nodes
        )
    )
    started = time.monotonic()
    submitted = commands.parse_json(
        flwr(link, commands.run_argv(config_file), "submitting the run"), "flwr run"
    )
    run_id = commands.run_id_of(submitted)
    status = _follow(group, link, run_id, on_tick)
    seconds = time.monotonic() - started
    log_path = group.log_dir / "serverapp.log"
    log_path.write_text(flwr(link, commands.log_argv(run_id), "fetching the ServerApp log"))
    if not status.succeeded:
        raise commands.run_error(status, log_path)
    return FlowerRunResult(
        run_id, f"{status.status}:{status.sub_status}", seconds, status.total_bytes, log_path, group.exited()
    )


def _follow(group: ProcessGroup, link: SuperLink, run_id: str, on_tick: Tick | None) -> RunStatus:
    """Tick once a second; ask the run's status in the background, less and less often, until it finishes.

    Each ``flwr ls`` costs about a CPU-second on a host that may be training, so the pause between two asks
    grows from 1 s to :data:`STATUS_EVERY_MAX_S`: a quick failure is seen at once, a long run costs little.
    """
    asking: subprocess.Popen[str] | None = None
    asked_at, pause = 0.0, 1.0
    try:
        while True:
            group.check({"superlink"})
            now = time.monotonic()
            if asking is None and now >= asked_at + pause:
                asking, asked_at, pause = (
                    _ask_status(link, run_id),
                    now,
                    min(pause * 1.25, STATUS_EVERY_MAX_S),
                )
            elif asking is not None and asking.poll() is not None:
                stdout = asking.stdout.read() if asking.stdout is not None else ""
                asking = None
                status = commands.run_status_of(commands.parse_json(stdout, "flwr ls"))
                if status.finished:
                    return status
            elif asking is not None and now > asked_at + CLI_TIMEOUT_S:
                raise FederationError(f"`flwr ls` gave no run status within {CLI_TIMEOUT_S:g} s")
            if on_tick is not None:
                on_tick()
            time.sleep(TICK_S)
    finally:
        if asking is not None:
            asking.kill()
            asking.wait()


def _ask_status(link: SuperLink, run_id: str) -> subprocess.Popen[str]:
    # In the background, so that on_tick keeps its pace while the CLI starts (about a second).
    return subprocess.Popen(
        commands.status_argv(run_id),
        env=child_env(link.cli_home),
        cwd=link.cli_home,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
