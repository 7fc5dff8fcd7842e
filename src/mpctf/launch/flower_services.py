"""Starting Flower's pieces one by one: the SuperLink, a party (worker + SuperNode), the ``flwr`` CLI.

These are the building blocks of the local launcher and of the split start (``mpctf server`` on one host,
``mpctf party`` on each other). Each launch gets its own ``FLWR_HOME`` folders under the run directory, Flower's
telemetry and update check are off, and every child imports the same ``mpctf`` as this process.

Run directory layout::

    logs/NAME.log            one per process (superlink, worker-P, supernode-P) and serverapp.log
    flower/superlink/        the SuperLink's FLWR_HOME
    flower/cli/config.toml   the flwr CLI's FLWR_HOME, with the one connection "mpctf"
    parties/P/               party P: authkey (mode 600), worker.json (ready marker), node-config.toml, flower/
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mpctf
from mpctf.errors import FederationError, LaunchError
from mpctf.launch.processes import ProcessGroup, describe_exit, tail
from mpctf.runtime import party_link
from mpctf.runtime.flower import commands, protocol
from mpctf.runtime.flower.commands import ServerTls

log = logging.getLogger("mpctf.launch")

#: The ``flwr`` CLI starts in about a second; a command that takes this long is stuck.
CLI_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PartySpec:
    """One party to start: its name, the keyword arguments of its handler factory, extra environment."""

    name: str
    handler_kwargs: dict[str, str] = field(default_factory=dict)
    #: Added to the party worker's environment (e.g. ``CUDA_VISIBLE_DEVICES``).
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SuperLink:
    """A started SuperLink and the CLI home that reaches it."""

    address: str
    cli_home: Path
    root_cert: Path | None = None
    #: Party name -> the node id Flower gave the key registered for it (empty without node authentication).
    party_nodes: Mapping[str, int] = field(default_factory=dict)


def child_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child: quiet Flower, its own FLWR_HOME, our interpreter and mpctf first."""
    env = dict(os.environ)
    env.update(commands.QUIET_ENV)
    env["FLWR_HOME"] = str(flwr_home)
    # Flower starts flower-superexec and flwr-clientapp by bare name: they must be this interpreter's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    src = str(Path(mpctf.__file__).resolve().parent.parent)
    inherited = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([src, *inherited]))
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (another process may still take it before we bind)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    ready: Callable[[], bool],
    group: ProcessGroup,
    timeout_s: float,
    what: str,
    *,
    log_path: Path | None = None,
    every_s: float = 0.2,
) -> None:
    """Poll ``ready`` until true; ``LaunchError`` if a process of ``group`` dies or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        group.check()
        if ready():
            return
        if time.monotonic() >= deadline:
            where = f"; log {log_path}: {tail(log_path) or '(empty)'}" if log_path is not None else ""
            raise LaunchError(f"timed out after {timeout_s:g} s waiting for {what}{where}")
        time.sleep(every_s)


def start_superlink(
    run_dir: Path,
    group: ProcessGroup,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    tls: ServerTls | None = None,
    party_public_keys: Mapping[str, Path] | None = None,
    timeout_s: float = 60.0,
) -> SuperLink:
    """Start the SuperLink on ``host:port`` (a free port if None) and wait until its health check answers.

    With ``party_public_keys`` (party name → OpenSSH public key) only those parties' SuperNodes may join; the
    node id Flower returns for each key is kept in :attr:`SuperLink.party_nodes`, which binds the name to the key.
    """
    port = port or free_port(host)
    home = run_dir / "flower" / "superlink"
    home.mkdir(parents=True, exist_ok=True)
    argv = commands.superlink_argv(port, host=host, tls=tls, node_auth=party_public_keys is not None)
    group.start("superlink", argv, env=child_env(home), cwd=home)
    local = f"127.0.0.1:{port}"
    root_cert = tls.ca_cert if tls is not None else None
    wait_until(
        lambda: superlink_healthy(local, root_cert),
        group,
        timeout_s,
        f"the SuperLink to answer on {local}",
        log_path=group.log_dir / "superlink.log",
    )
    link = connect_cli(run_dir, local, root_cert=root_cert)
    nodes: dict[str, int] = {}
    for party, public_key in (party_public_keys or {}).items():
        what = f"registering party {party!r}'s key {public_key}"
        registered = commands.parse_json(flwr(link, commands.register_argv(public_key, party), what), what)
        nodes[party] = commands.node_id_of(registered)
    return dataclasses.replace(link, party_nodes=nodes)


def connect_cli(run_dir: Path, address: str, *, root_cert: Path | None = None) -> SuperLink:
    """Write the CLI's config.toml for the SuperLink at ``address``."""
    cli_home = run_dir / "flower" / "cli"
    cli_home.mkdir(parents=True, exist_ok=True)
    (cli_home / "config.toml").write_text(commands.cli_config(address, root_cert=root_cert))
    return SuperLink(address, cli_home, root_cert)


def superlink_healthy(address: str, root_cert: Path | None = None) -> bool:
    """Whether the SuperLink at ``host:port`` answers its health check (over TLS when ``root_cert`` is given)."""
    scheme = "http" if root_cert is None else "https"
    context = ssl.create_default_context(cafile=str(root_cert)) if root_cert is not None else None
    try:
        with urllib.request.urlopen(f"{scheme}://{address}/health", timeout=2, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def flwr(link: SuperLink, argv: list[str], what: str) -> str:
    """Run a ``flwr`` CLI command against ``link``; its stdout, or ``FederationError``."""
    try:
        done = subprocess.run(
            argv,
            env=child_env(link.cli_home),
            cwd=link.cli_home,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FederationError(
            f"{what}: `{' '.join(argv[:3])}` did not finish within {CLI_TIMEOUT_S:g} s"
        ) from None
    if done.returncode != 0 and "{" not in done.stdout:
        message = " ".join((done.stderr or done.stdout).split())[-300:]
        raise FederationError(f"{what}: `{' '.join(argv[:3])}` exited with code {done.returncode}: {message}")
    return done.stdout


def online_parties(link: SuperLink) -> int:
    """How many SuperNodes the SuperLink sees online."""
    return commands.online_nodes(
        commands.parse_json(flwr(link, commands.nodes_argv(), "listing nodes"), "nodes")
    )


def start_worker(run_dir: Path, group: ProcessGroup, party: PartySpec, handler_factory: str) -> Path:
    """Start the party's long-lived worker (it loads the model); returns its ready-marker path."""
    folder = run_dir / "parties" / party.name
    folder.mkdir(parents=True, exist_ok=True)
    authkey_file, ready_file = folder / "authkey", folder / "worker.json"
    party_link.write_authkey(authkey_file, secrets.token_bytes(32))
    ready_file.unlink(missing_ok=True)
    # A fixed port, so that a worker started again after a crash (:func:`revive_workers`) serves where its
    # SuperNode already forwards.
    argv = party_link.command(
        handler_factory,
        party.handler_kwargs,
        authkey_file=authkey_file,
        ready_file=ready_file,
        port=free_port(),
    )
    env = child_env(folder / "flower", {"PYTHONUNBUFFERED": "1", **party.env})
    group.start(f"worker-{party.name}", argv, env=env, cwd=folder)
    return ready_file


def revive_workers(group: ProcessGroup, restarts: dict[str, int], max_restarts: int = 5) -> None:
    """Start again every party worker of ``group`` that has died, up to ``max_restarts`` times each.

    The new worker loads the model and serves on the old port; until it is ready its party's replies are
    errors, and the round loop goes on with the other parties.
    """
    for name, code in group.exited().items():
        if name.startswith("worker-") and restarts.get(name, 0) < max_restarts:
            restarts[name] = restarts.get(name, 0) + 1
            child = next(c for c in group.children() if c.name == name)
            log.warning(
                "%s; restarting it (%d of %d)", describe_exit(child, code), restarts[name], max_restarts
            )
            group.restart(name)


def wait_worker(group: ProcessGroup, party: str, ready_file: Path, timeout_s: float) -> str:
    """Wait for a worker's ready marker; returns the address it serves on."""
    wait_until(
        ready_file.exists,
        group,
        timeout_s,
        f"party {party!r}'s worker to be ready",
        log_path=group.log_dir / f"worker-{party}.log",
    )
    return str(json.loads(ready_file.read_text())["address"])


def start_supernode(
    run_dir: Path,
    group: ProcessGroup,
    party: str,
    superlink: str,
    worker_address: str,
    *,
    root_cert: Path | None = None,
    auth_key: Path | None = None,
) -> None:
    """Start the party's SuperNode, whose ClientApps forward tasks to the worker at ``worker_address``.

    ``root_cert`` is the CA certificate of a TLS SuperLink, ``auth_key`` the party's private key when the
    SuperLink authenticates SuperNodes.
    """
    folder = run_dir / "parties" / party
    node_config = folder / "node-config.toml"
    node_config.write_text(protocol.node_config(party, worker_address, folder / "authkey"))
    argv = commands.supernode_argv(
        superlink, free_port(), node_config, root_cert=root_cert, auth_key=auth_key
    )
    group.start(f"supernode-{party}", argv, env=child_env(folder / "flower"), cwd=folder)


def start_party(
    run_dir: Path,
    group: ProcessGroup,
    party: PartySpec,
    *,
    superlink: str,
    handler_factory: str,
    root_cert: Path | None = None,
    auth_key: Path | None = None,
    startup_timeout_s: float = 600.0,
) -> None:
    """Start one party: its worker, then (once the model is loaded) its SuperNode pointing at ``superlink``."""
    ready_file = start_worker(run_dir, group, party, handler_factory)
    address = wait_worker(group, party.name, ready_file, startup_timeout_s)
    start_supernode(run_dir, group, party.name, superlink, address, root_cert=root_cert, auth_key=auth_key)
