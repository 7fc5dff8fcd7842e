"""`mpctf server` and `mpctf party` started apart, as separate organisations would, over TLS."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mpctf.errors import FederationError
from mpctf.report.metrics import read_metrics
from support import tiny_config_dict

pytestmark = [pytest.mark.slow, pytest.mark.flower]

MPCTF = [sys.executable, "-m", "mpctf.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*MPCTF, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _tls_handshake(port: int, ca: Path, timeout_s: float = 120.0) -> bool:
    """True once a TLS handshake that trusts only ``ca`` succeeds on ``port`` (the SuperLink is up)."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                return tls.version() is not None
        except ConnectionRefusedError:
            time.sleep(0.5)
    return False


def test_open_server_off_loopback_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path)))
    done = subprocess.run(
        [*MPCTF, "server", str(config), "--host", "0.0.0.0"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "need TLS and party keys" in done.stderr


def _party_args(config: Path, name: str, port: int, certs: Path, key: str, work_dir: Path) -> list[str]:
    return [
        "party",
        str(config),
        "--name",
        name,
        "--server",
        f"127.0.0.1:{port}",
        "--root-cert",
        str(certs / "ca.crt"),
        "--auth-key",
        str(certs / "parties" / key),
        "--work-dir",
        str(work_dir),
    ]


def test_server_and_parties_started_apart_over_tls(tmp_path: Path) -> None:
    """Alice and bob train one round; a third `mpctf party` with a key the server never registered is refused.

    The config names only alice and bob, so `mpctf server --certs` registers their keys and not carol's.
    """
    cfg = tiny_config_dict(tmp_path, **{"federation.rounds": 1, "federation.min_parties": 2})
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump(cfg))
    certs = tmp_path / "certs"
    keys = ["--party", "alice", "--party", "bob", "--party", "carol"]
    subprocess.run(
        [*MPCTF, "certs", str(certs), "--server-host", "127.0.0.1", *keys],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    run_dir = tmp_path / "run"
    server = _start(
        [
            "server",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--certs",
            str(certs),
            "--run-dir",
            str(run_dir),
        ],
        tmp_path / "server.out",
    )
    parties = [
        _start(_party_args(config, name, port, certs, name, tmp_path / name), tmp_path / f"{name}.out")
        for name in ("alice", "bob")
    ]
    unregistered = _start(
        [*_party_args(config, "bob", port, certs, "carol", tmp_path / "carol"), "--server-wait", "20"],
        tmp_path / "carol.out",
    )
    try:
        assert _tls_handshake(port, certs / "ca.crt"), (
            "the SuperLink did not serve TLS with the federation's CA"
        )
        code = server.wait(timeout=400)
        refused_code = unregistered.wait(timeout=120)
    finally:
        for proc in [server, *parties, unregistered]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*parties, unregistered]:
            proc.wait(timeout=60)
    assert code == 0, (tmp_path / "server.out").read_text()[-2000:]
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records if r["event"] == "round"] == [0, 1]
    assert {r["party"] for r in records if r["event"] == "party_round" and r["status"] == "ok"} == {
        "alice",
        "bob",
    }
    # The party with the unregistered key says why it ends, in one line, and exits with the federation code.
    said = (tmp_path / "carol.out").read_text()
    assert f"party 'bob': waiting for the server at 127.0.0.1:{port} (giving up after 20 s)" in said, said
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == said.rstrip("\n").splitlines()[-1], said
    assert errors[0].startswith(
        f"error: party 'bob': the server at 127.0.0.1:{port} refused this party's key"
    ), said
    assert errors[0].endswith("(not registered there, or in use by another SuperNode)"), said
    assert refused_code == FederationError.exit_code == 5
