"""Parties on other machines, started over SSH by ``mpctf launch`` (backend ``flower``, ``parties[].host``).

The server side runs here: a SuperLink on all interfaces with TLS and party authentication, credentials made
fresh for the launch with :func:`~mpctf.launch.certs.create_certificates`. For each party with a ``host`` the
launcher, with the OpenSSH client (``BatchMode``: keys or an agent, never a password prompt):

1. asks the host which address its SSH connection came from (``$SSH_CLIENT``) unless ``server_address`` is set:
   that is the address the party dials, and it goes into the server certificate;
2. copies the party's config (its ``data.path`` replaced by ``host.data_path``), ``ca.crt`` and the party's
   private key into ``host.work_dir`` with ``scp -p`` (the key keeps mode 600);
3. runs ``mpctf party`` there under ``ssh -tt``, whose output streams into ``RUN_DIR/logs/remote-NAME.log``.

Parties without a ``host`` start here as in a local launch, with the same TLS and keys. Every ``ssh`` process is
in the launch's :class:`~mpctf.launch.processes.ProcessGroup`: when the run ends, fails or is interrupted, killing
it closes the connection, the remote shell gets SIGHUP, and ``mpctf party`` stops its worker and SuperNode.

``MPCTF_SSH`` and ``MPCTF_SCP`` name other programs with the same command lines (a wrapper that adds a jump host,
for example).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from mpctf.config import DatasetConfig, HostConfig, RunConfig, dump_config
from mpctf.errors import LaunchError
from mpctf.launch.certs import Certificates, create_certificates
from mpctf.launch.flower_local import reviving, run_federation
from mpctf.launch.flower_services import (
    PartySpec,
    free_port,
    online_parties,
    start_party,
    start_superlink,
    wait_until,
)
from mpctf.launch.processes import ProcessGroup, signals_raise
from mpctf.report.metrics import MetricsTail, Record
from mpctf.runtime.flower.commands import ServerTls
from mpctf.server.loop import RunResult

SSH_ENV, SCP_ENV = "MPCTF_SSH", "MPCTF_SCP"
#: A step over SSH (a mkdir, a copy) that takes longer than this is stuck.
SSH_STEP_TIMEOUT_S = 120.0
#: Options of every ssh/scp call: never prompt; notice a dead link within a minute.
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]


def ssh_argv(host: HostConfig, remote_command: str, *, tty: bool = False) -> list[str]:
    """``ssh`` to ``host`` running ``remote_command`` (a shell command line); ``tty`` ties it to the link."""
    argv = [os.environ.get(SSH_ENV, "ssh"), "-p", str(host.port), *SSH_OPTIONS]
    return [*argv, *(["-tt"] if tty else []), host.address, "--", remote_command]


def scp_argv(host: HostConfig, files: list[Path], remote_dir: str) -> list[str]:
    """``scp -p`` of local ``files`` into ``remote_dir`` on ``host`` (modes kept: private keys stay 600)."""
    argv = [os.environ.get(SCP_ENV, "scp"), "-P", str(host.port), "-p", "-q", *SSH_OPTIONS]
    return [*argv, *map(str, files), f"{host.address}:{remote_dir}/"]


def _run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SSH_STEP_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{what}: no answer within {SSH_STEP_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise LaunchError(f"{what}: could not run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split())[-300:]
        raise LaunchError(f"{what}: `{argv[0]}` exited with code {done.returncode}: {message}")
    return done.stdout


def dial_address(party: str, host: HostConfig, port: int) -> str:
    """``HOST:PORT`` that ``party``'s host dials to reach this server."""
    if host.server_address is not None:
        return host.server_address
    out = _run(
        ssh_argv(host, 'echo "$SSH_CLIENT"'), f"party {party!r}: asking {host.address} for $SSH_CLIENT"
    )
    fields = out.split()
    if not fields:
        raise LaunchError(
            f"party {party!r}: {host.address} did not say where its SSH connection came from; "
            "set parties[].host.server_address"
        )
    return f"{fields[0]}:{port}"


def remote_config(config: RunConfig, party: str, host: HostConfig) -> str:
    """The config as the remote party reads it: its own data file at ``host.data_path``."""
    if host.data_path is None:
        return dump_config(config)
    parties = []
    for p in config.parties:
        if p.name == party:
            own = p.data or DatasetConfig(path=Path(host.data_path))
            p = p.model_copy(update={"data": own.model_copy(update={"path": Path(host.data_path)})})
        parties.append(p)
    return dump_config(config.model_copy(update={"parties": parties}))


def party_command(party: str, host: HostConfig, server: str) -> str:
    """The shell command line that runs ``mpctf party`` in ``host.work_dir``, its processes' logs following.

    ``tail -F`` prints the worker's and the SuperNode's logs as they grow, so they reach the launcher over the
    same connection; it shares the session, so the hang-up that stops the party stops it too.
    """
    q = shlex.quote
    env = f"CUDA_VISIBLE_DEVICES={q(host.devices)} " if host.devices is not None else ""
    logs = f"logs/worker-{party}.log logs/supernode-{party}.log"
    return (
        f"cd {q(host.work_dir)} && mkdir -p logs && {{ tail -n +1 -F {logs} 2>/dev/null & }} && "
        f"{env}PYTHONUNBUFFERED=1 exec {q(host.python)} -m mpctf.cli party config.yaml --name {q(party)} "
        f"--server {q(server)} --root-cert ca.crt --auth-key {q(party)}.key --work-dir ."
    )


def start_remote_party(
    run_dir: Path, group: ProcessGroup, config: RunConfig, party: str, server: str, certs: Certificates
) -> None:
    """Copy the party's config and credentials to its host, then start ``mpctf party`` there over SSH."""
    host = config.party(party).host
    assert host is not None
    staging = run_dir / "remote" / party
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "config.yaml").write_text(remote_config(config, party, host))
    key = staging / f"{party}.key"
    key.write_bytes(certs.party_private_keys[party].read_bytes())
    key.chmod(0o600)
    where = f"party {party!r} on {host.address}"
    _run(ssh_argv(host, f"mkdir -p {shlex.quote(host.work_dir)}"), f"{where}: creating {host.work_dir}")
    files = [staging / "config.yaml", certs.ca_cert, key]
    _run(scp_argv(host, files, host.work_dir), f"{where}: copying its config and credentials")
    group.start(f"remote-{party}", ssh_argv(host, party_command(party, host, server), tty=True))


def run_with_hosts(
    config: RunConfig,
    run_dir: Path,
    config_path: Path,
    settings: Mapping[str, str],
    *,
    driver: str,
    handler_factory: str,
    listeners: list[Callable[[Record], None]],
    port: int | None = None,
    startup_timeout_s: float = 600.0,
) -> RunResult:
    """Run the federation with the server here and each party here or on its ``host``; tear all down."""
    from mpctf.launch.federation import _party_spec, _result

    port = port or free_port("0.0.0.0")
    remote = {p.name: p.host for p in config.parties if p.host is not None}
    local = [p for p in config.party_names if p not in remote]
    dial = {party: dial_address(party, host, port) for party, host in remote.items()}
    hosts = ["127.0.0.1", "localhost", *dict.fromkeys(a.rpartition(":")[0] for a in dial.values())]
    certs = create_certificates(run_dir / "certs", hosts, config.party_names)
    tls = ServerTls(ca_cert=certs.ca_cert, cert=certs.server_cert, key=certs.server_key)
    tail = MetricsTail(run_dir / "metrics.jsonl", listeners)
    # A longer grace than a party's own (5 s): a remote ``mpctf party`` stops its worker and SuperNode first.
    with signals_raise(), ProcessGroup(run_dir / "logs", grace_s=15.0) as group:
        link = start_superlink(
            run_dir, group, host="0.0.0.0", port=port, tls=tls, party_public_keys=certs.party_public_keys
        )
        for party in remote:
            start_remote_party(run_dir, group, config, party, dial[party], certs)
        for party in local:
            spec: PartySpec = _party_spec(config, config_path, party, parties_on_host=len(local))
            start_party(
                run_dir,
                group,
                spec,
                superlink=f"127.0.0.1:{port}",
                handler_factory=handler_factory,
                root_cert=certs.ca_cert,
                auth_key=certs.party_private_keys[party],
                startup_timeout_s=startup_timeout_s,
            )
        n = len(config.parties)
        wait_until(
            lambda: online_parties(link) >= n,
            group,
            startup_timeout_s,
            f"{n} parties to be online",
            every_s=2.0,
        )
        run_federation(
            run_dir,
            group,
            link,
            driver,
            settings,
            min_parties=n,
            party_wait_s=startup_timeout_s,
            on_tick=reviving(group, tail.poll),
        )
    tail.poll()
    return _result(run_dir, settings.get("resume") == "true")
