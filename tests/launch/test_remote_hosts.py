"""Parties on other hosts, started over SSH by ``mpctf launch``.

The command lines are checked as text; the launch itself runs for real where the machine allows it. Without an
OpenSSH server (``sshd``) the host is a network namespace joined to this one by a veth pair, and ``ssh``/``scp``
are stand-ins with the same command lines (``remote_shims/``) that run the remote command inside it: the party
there reaches the server only over the veth link, through TLS with its own key, exactly as from another machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mpctf.api import run
from mpctf.config import HostConfig, load_config
from mpctf.errors import ConfigError
from mpctf.launch.remote import SCP_ENV, SSH_ENV, party_command, remote_config, scp_argv, ssh_argv
from mpctf.report.metrics import read_metrics
from support import tiny_config_dict

SHIMS = Path(__file__).resolve().parent / "remote_shims"


def test_ssh_command_lines_quote_and_never_prompt() -> None:
    host = HostConfig(
        address="ana@gpu-1", port=2222, work_dir="runs/my party", python="/opt/venv/bin/python", devices="0,1"
    )
    argv = ssh_argv(host, party_command("bob", host, "10.0.0.1:9093"), tty=True)
    assert argv[:3] == ["ssh", "-p", "2222"] and "BatchMode=yes" in argv and "-tt" in argv
    assert argv[-3:-1] == ["ana@gpu-1", "--"]
    remote = argv[-1]
    assert remote.startswith("cd 'runs/my party' && ")
    assert "CUDA_VISIBLE_DEVICES=0,1 " in remote
    assert (
        "exec /opt/venv/bin/python -m mpctf.cli party config.yaml --name bob --server 10.0.0.1:9093" in remote
    )
    assert "--root-cert ca.crt --auth-key bob.key" in remote
    copy = scp_argv(host, [Path("/x/config.yaml"), Path("/x/bob.key")], "runs/my party")
    assert copy[:3] == ["scp", "-P", "2222"] and "-p" in copy
    assert copy[-1] == "ana@gpu-1:runs/my party/"


def test_remote_config_points_at_the_hosts_data(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"backend.name": "flower"})
    cfg["parties"][1]["host"] = {"address": "gpu-1", "data_path": "/data/bob.csv"}
    config = load_config(cfg)
    text = remote_config(config, "bob", config.party("bob").host)
    bob = next(p for p in yaml.safe_load(text)["parties"] if p["name"] == "bob")
    assert bob["data"]["path"] == "/data/bob.csv"
    # On bob's host only bob's file must exist; the server does not look for it.
    with pytest.raises(ConfigError, match=r"parties\.1\.data\.path"):
        load_config(yaml.safe_load(text), party="bob")
    load_config(yaml.safe_load(text))


def test_a_host_needs_the_flower_backend(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"backend.name": "processes"})
    cfg["parties"][1]["host"] = {"address": "gpu-1"}
    with pytest.raises(ConfigError, match=r"needs `backend\.name: flower`"):
        run(cfg, run_dir=tmp_path / "run")


def _netns_usable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"mpctf-probe-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` is not permitted here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@dataclass(frozen=True)
class FakeHost:
    """A host for one party: its name in ``$FAKE_HOSTS``, its namespace (None on loopback) and addresses."""

    name: str
    netns: str | None
    server_ip: str  # the server as this host reaches it
    party_ip: str  # this host's own address


def _add_namespace(hosts: Path, name: str, undo: list[list[str]]) -> FakeHost:
    """Namespace ``10.231.X.2`` joined to this one (``10.231.X.1``) by a veth pair, as host ``name``."""
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"mpctf-{tag}", f"mv{tag}a", f"mv{tag}b"
    subnet = 10 + int(tag, 16) % 200
    server_ip, party_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    undo += [["ip", "link", "del", here], ["ip", "netns", "del", ns]]
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", ns],
        ["ip", "addr", "add", f"{server_ip}/24", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{party_ip}/24", "dev", there],
        ["ip", "netns", "exec", ns, "ip", "link", "set", there, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    for step in steps:
        subprocess.run(step, check=True, capture_output=True)
    (hosts / name / "home").mkdir(parents=True)
    (hosts / name / "netns").write_text(ns)
    (hosts / name / "client").write_text(server_ip)
    return FakeHost(name, ns, server_ip, party_ip)


@pytest.fixture
def fake_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeHost]]:
    """One network namespace per party (``alice``, ``bob``), each joined to this one by its own veth pair, with
    the ssh/scp stand-ins of ``remote_shims/`` (a test may replace them with the real programs)."""
    if (reason := _netns_usable()) is not None:
        pytest.skip(f"{reason}; test_parties_on_distinct_loopback_addresses runs instead")
    hosts, undo = tmp_path / "hosts", []
    try:
        made = {p: _add_namespace(hosts, f"{p}-host", undo) for p in ("alice", "bob")}
        monkeypatch.setenv("FAKE_HOSTS", str(hosts))
        monkeypatch.setenv(SSH_ENV, str(SHIMS / "ssh"))
        monkeypatch.setenv(SCP_ENV, str(SHIMS / "scp"))
        yield made
    finally:
        for step in undo:
            subprocess.run(step, capture_output=True)


def _sshd() -> str | None:
    return shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _run_with_remote_parties(tmp_path: Path, hosts: dict[str, tuple[str, str, Path]]) -> None:
    """Two rounds with every party started over SSH; ``hosts``: party -> (address, work_dir, its home there).
    Checks what reached each host and that each party trained in both rounds."""
    cfg = tiny_config_dict(
        tmp_path, **{"backend.name": "flower", "federation.rounds": 2, "training.threads": 1}
    )
    for party in cfg["parties"]:
        address, work_dir, _ = hosts[party["name"]]
        party["host"] = {"address": address, "work_dir": work_dir, "python": sys.executable}
    run_dir = tmp_path / "run"
    result = run(cfg, run_dir=run_dir)
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    records = read_metrics(run_dir / "metrics.jsonl")
    for party, (_, _, home) in hosts.items():
        mine = [r for r in records if r["event"] == "party_round" and r["party"] == party]
        assert [r["status"] for r in mine] == ["ok", "ok"], party
        assert (
            home / f"{party}.key"
        ).stat().st_mode & 0o077 == 0  # the key arrived readable by its owner only
        assert [k.name for k in home.glob("*.key")] == [
            f"{party}.key"
        ]  # a host gets its own party's key only
        streamed = (run_dir / "logs" / f"remote-{party}.log").read_text()
        assert "party worker ready" in streamed  # the remote worker's log reached the run directory
        assert load_config(home / "config.yaml", party=party).party(party).host is not None


@pytest.mark.slow
@pytest.mark.flower
def test_parties_in_other_network_namespaces_train_over_tls(
    tmp_path: Path, fake_hosts: dict[str, FakeHost]
) -> None:
    """Through the ssh/scp stand-ins, where no OpenSSH server is installed (otherwise the test below runs)."""
    if _sshd() is not None:
        pytest.skip(
            "an OpenSSH server is installed: test_real_sshd_in_each_party_namespace covers this launch"
        )
    root = tmp_path / "hosts"
    _run_with_remote_parties(
        tmp_path,
        {
            p: (f"ana@{h.name}", "party-work", root / h.name / "home" / "party-work")
            for p, h in fake_hosts.items()
        },
    )


def _wait_for_port(address: str, port: int, daemon: subprocess.Popen[bytes]) -> None:
    """A real host's sshd listens before anyone logs in; here it has just been started."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"sshd exited with code {daemon.returncode}"
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"sshd did not listen on {address}:{port} within 20 s")


@pytest.mark.slow
@pytest.mark.flower
def test_real_sshd_in_each_party_namespace(
    tmp_path: Path, fake_hosts: dict[str, FakeHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launch through a real OpenSSH server started in each party's namespace (where one is installed)."""
    sshd = _sshd()
    if sshd is None:
        pytest.skip(
            "no OpenSSH server (sshd) installed here; the namespace test with ssh stand-ins covers the launch"
        )
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "client_key.pub", keys / "authorized_keys")
    (keys / "sshd_config").write_text(
        f"HostKey {keys / 'host_key'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile none\n"
        "PasswordAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n"
        "AcceptEnv PYTHONPATH\nSubsystem sftp internal-sftp\nSetEnv PATH=" + os.environ["PATH"] + "\n"
    )
    (keys / "ssh_config").write_text(
        f"Host {' '.join(h.party_ip for h in fake_hosts.values())}\n  IdentityFile {keys / 'client_key'}\n"
        f"  StrictHostKeyChecking no\n  UserKnownHostsFile {keys / 'known_hosts'}\n"
        f"  SetEnv PYTHONPATH={os.environ.get('PYTHONPATH', '')}\n"
    )
    for tool in ("ssh", "scp"):
        wrapper = keys / tool
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which(tool)} -F {keys / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv(SSH_ENV, str(keys / "ssh"))
    monkeypatch.setenv(SCP_ENV, str(keys / "scp"))
    Path("/run/sshd").mkdir(
        mode=0o755, exist_ok=True
    )  # sshd's privilege-separation folder, made by its service
    daemons = []
    try:
        for host in fake_hosts.values():
            argv = ["ip", "netns", "exec", str(host.netns), sshd, "-D", "-e", "-f", str(keys / "sshd_config")]
            daemons.append(subprocess.Popen(argv))
            _wait_for_port(host.party_ip, 22, daemons[-1])
        work = {p: tmp_path / f"{p}-work" for p in fake_hosts}
        _run_with_remote_parties(
            tmp_path, {p: (f"root@{h.party_ip}", str(work[p]), work[p]) for p, h in fake_hosts.items()}
        )
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait()


@pytest.mark.slow
@pytest.mark.flower
def test_parties_on_distinct_loopback_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where network namespaces are not permitted: each party a "host" at its own loopback address
    (127.0.0.2, 127.0.0.3) through the ssh/scp stand-ins, the server reached at 127.0.0.1."""
    if _netns_usable() is None and not os.environ.get("MPCTF_TEST_LOOPBACK_HOSTS"):
        pytest.skip("network namespaces work here: the namespace tests cover this launch")
    root = tmp_path / "hosts"
    hosts = {}
    for party, address in (("alice", "127.0.0.2"), ("bob", "127.0.0.3")):
        (root / address / "home").mkdir(parents=True)
        (root / address / "client").write_text("127.0.0.1")
        hosts[party] = (f"ana@{address}", "party-work", root / address / "home" / "party-work")
    monkeypatch.setenv("FAKE_HOSTS", str(root))
    monkeypatch.setenv(SSH_ENV, str(SHIMS / "ssh"))
    monkeypatch.setenv(SCP_ENV, str(SHIMS / "scp"))
    _run_with_remote_parties(tmp_path, hosts)
