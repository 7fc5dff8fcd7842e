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


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A network namespace ``10.231.X.2`` joined to this one (``10.231.X.1``) as host ``bob-host``."""
    if (reason := _netns_usable()) is not None:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"mpctf-{tag}", f"mv{tag}a", f"mv{tag}b"
    subnet = 10 + int(tag, 16) % 200
    server_ip, party_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
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
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        hosts = tmp_path / "hosts"
        (hosts / "bob-host" / "home").mkdir(parents=True)
        (hosts / "bob-host" / "netns").write_text(ns)
        (hosts / "bob-host" / "client").write_text(server_ip)
        monkeypatch.setenv("FAKE_HOSTS", str(hosts))
        monkeypatch.setenv(SSH_ENV, str(SHIMS / "ssh"))
        monkeypatch.setenv(SCP_ENV, str(SHIMS / "scp"))
        yield "bob-host"
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _sshd() -> str | None:
    return shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _run_with_remote_bob(tmp_path: Path, address: str, work_dir: str, home: Path) -> None:
    """Two rounds with party ``bob`` started over SSH at ``address``; checks what reached bob's host."""
    cfg = tiny_config_dict(
        tmp_path, **{"backend.name": "flower", "federation.rounds": 2, "training.threads": 1}
    )
    cfg["parties"][1]["host"] = {"address": address, "work_dir": work_dir, "python": sys.executable}
    run_dir = tmp_path / "run"
    result = run(cfg, run_dir=run_dir)
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    records = read_metrics(run_dir / "metrics.jsonl")
    bob = [r for r in records if r["event"] == "party_round" and r["party"] == "bob"]
    assert [r["status"] for r in bob] == ["ok", "ok"]
    assert (
        home / "bob.key"
    ).stat().st_mode & 0o077 == 0  # the private key arrived readable by its owner only
    assert not (home / "alice.key").exists()  # a host gets its own party's key only
    streamed = (run_dir / "logs" / "remote-bob.log").read_text()
    assert "party worker ready" in streamed  # the remote worker's log reached the run directory
    dialed = load_config(home / "config.yaml", party="bob")
    assert dialed.party("bob").host is not None


@pytest.mark.slow
@pytest.mark.flower
def test_party_in_another_network_namespace_trains_over_tls(tmp_path: Path, fake_host: str) -> None:
    """Through the ssh/scp stand-ins, where no OpenSSH server is installed (otherwise the test below runs)."""
    if _sshd() is not None:
        pytest.skip("an OpenSSH server is installed: test_real_sshd_between_namespaces covers this launch")
    work_dir = "party-work"
    _run_with_remote_bob(
        tmp_path, f"ana@{fake_host}", work_dir, tmp_path / "hosts" / fake_host / "home" / work_dir
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
def test_real_sshd_between_namespaces(
    tmp_path: Path, fake_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launch through a real OpenSSH server started in the host's namespace (where one is installed)."""
    sshd = _sshd()
    if sshd is None:
        pytest.skip(
            "no OpenSSH server (sshd) installed here; the namespace test with ssh stand-ins covers the launch"
        )
    hosts = tmp_path / "hosts" / fake_host
    ns, server_ip = (hosts / "netns").read_text(), (hosts / "client").read_text()
    party_ip = server_ip.rsplit(".", 1)[0] + ".2"
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
        f"Host {party_ip}\n  IdentityFile {keys / 'client_key'}\n  StrictHostKeyChecking no\n"
        f"  UserKnownHostsFile {keys / 'known_hosts'}\n  SetEnv PYTHONPATH={os.environ.get('PYTHONPATH', '')}\n"
    )
    for tool, flag in (("ssh", "-F"), ("scp", "-F")):
        wrapper = keys / tool
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which(tool)} {flag} {keys / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv(SSH_ENV, str(keys / "ssh"))
    monkeypatch.setenv(SCP_ENV, str(keys / "scp"))
    Path("/run/sshd").mkdir(
        mode=0o755, exist_ok=True
    )  # sshd's privilege-separation folder, made by its service
    daemon = subprocess.Popen(["ip", "netns", "exec", ns, sshd, "-D", "-e", "-f", str(keys / "sshd_config")])
    try:
        _wait_for_port(party_ip, 22, daemon)
        work_dir = tmp_path / "bob-work"
        _run_with_remote_bob(tmp_path, f"root@{party_ip}", str(work_dir), work_dir)
    finally:
        daemon.terminate()
        daemon.wait()
