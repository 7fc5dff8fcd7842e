"""The party worker as a real process: round trips, errors, timeouts, authentication, a crash mid-request."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpctf.runtime import party_link

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def start_worker(tmp_path: Path, *args: str, key: bytes = b"k" * 32) -> tuple[subprocess.Popen[bytes], str]:
    keyfile = tmp_path / "authkey"
    party_link.write_authkey(keyfile, key)
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    argv = party_link.command(
        "flower_fixtures:make_sum_handler", {"party": "p"}, authkey_file=keyfile, ready_file=ready
    )
    proc = subprocess.Popen([*argv, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    assert info["pid"] == proc.pid
    return proc, info["address"]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[str]:
    proc, address = start_worker(tmp_path)
    yield address
    proc.kill()
    proc.wait()


def test_round_trip_small_and_5_mb(worker: str) -> None:
    assert party_link.call(worker, b"k" * 32, bytes([1, 2, 3]), timeout_s=10) == b"p:6"
    big = bytes(range(256)) * (5 * 2**20 // 256)
    assert party_link.call(worker, b"k" * 32, big, timeout_s=30) == f"p:{sum(big)}".encode()


def test_handler_error_is_one_line_and_the_worker_lives_on(worker: str) -> None:
    with pytest.raises(party_link.RemoteError) as caught:
        party_link.call(worker, b"k" * 32, b"raise", timeout_s=10)
    assert str(caught.value) == "ValueError: p was asked to fail second line"
    assert party_link.call(worker, b"k" * 32, b"\x05", timeout_s=10) == b"p:5"


def test_wrong_key_is_refused_and_the_worker_lives_on(worker: str) -> None:
    with pytest.raises(party_link.AuthenticationError):
        party_link.call(worker, b"wrong" * 8, b"\x01", timeout_s=10)
    assert party_link.call(worker, b"k" * 32, b"\x01", timeout_s=10) == b"p:1"


def test_worker_dying_mid_request_fails_the_call(tmp_path: Path) -> None:
    proc, address = start_worker(tmp_path, "--arg", "crash_on_call=1")
    with pytest.raises((EOFError, ConnectionError)):
        party_link.call(address, b"k" * 32, b"\x01", timeout_s=10)
    assert proc.wait(timeout=10) == 3


def test_slow_reply_times_out(tmp_path: Path) -> None:
    proc, address = start_worker(tmp_path, "--arg", "delay_s=3")
    try:
        with pytest.raises(TimeoutError, match=r"no reply within 0\.5 s"):
            party_link.call(address, b"k" * 32, b"\x01", timeout_s=0.5)
    finally:
        proc.kill()
        proc.wait()


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    party_link.write_authkey(keyfile, b"secret")
    assert keyfile.stat().st_mode & 0o777 == 0o600
    assert party_link.read_authkey(keyfile) == b"secret"
    keyfile.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        party_link.read_authkey(keyfile)


def test_factory_reference_must_be_module_colon_callable() -> None:
    assert party_link.load_factory("json:dumps") is json.dumps
    with pytest.raises(ValueError, match=r"package\.module:function"):
        party_link.load_factory("json.dumps")
    with pytest.raises(ValueError, match="not callable"):
        party_link.load_factory("json:__name__")


def test_one_line() -> None:
    assert party_link.one_line(ValueError("a\n  b")) == "ValueError: a b"
    assert party_link.one_line(KeyError()) == "KeyError"
