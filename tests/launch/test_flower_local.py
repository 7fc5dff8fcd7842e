"""The local Flower launcher on real processes: SuperLink, two party workers and SuperNodes, a test driver.

Each run costs about half a minute (Flower's SuperNodes poll every 3 s), so these few tests cover the whole
path at once: the split start with TLS and party keys, the local launch, results and per-reply seconds, a
party crashing mid-run, the driver's own error reaching the caller, a worker that fails to start, and no
process left behind.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import psutil
import pytest

from mpctf.errors import DataError, LaunchError
from mpctf.launch.certs import create_certificates
from mpctf.launch.flower_local import launch_flower_local, launch_flower_server, serve_flower_party
from mpctf.launch.flower_services import PartySpec, free_port
from mpctf.runtime.flower.commands import ServerTls

pytestmark = [pytest.mark.flower, pytest.mark.slow]

FIXTURES = Path(__file__).resolve().parents[1] / "runtime"


@pytest.fixture(autouse=True)
def _fixtures_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers and the ServerApp import the handler factory and driver from tests/runtime/flower_fixtures.py.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]))


def left_behind(run_dir: Path) -> list[str]:
    """Live processes started for this launch: every one of them has its FLWR_HOME inside the run directory."""
    found = []
    for proc in psutil.process_iter(["status", "cmdline"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(run_dir) in proc.environ().get(
                "FLWR_HOME", ""
            ):
                found.append(" ".join(proc.info["cmdline"] or []))
        except psutil.Error:
            continue
    return found


def parties(**extra: dict[str, str]) -> list[PartySpec]:
    return [PartySpec(name, {"party": name, **extra.get(name, {})}) for name in ("alice", "bob")]


def test_split_start_with_tls_and_party_keys_two_rounds(tmp_path: Path) -> None:
    """``mpctf server`` and two ``mpctf party`` launches (threads here, hosts in real life), each its own folder."""
    certs = create_certificates(tmp_path / "certs", ["127.0.0.1"], ["alice", "bob"])
    tls = ServerTls(certs.ca_cert, certs.server_cert, certs.server_key)
    port = free_port()
    outcome: dict[str, BaseException | None] = {}

    def serve(party: PartySpec) -> None:
        try:
            serve_flower_party(
                tmp_path / party.name,
                party,
                superlink=f"127.0.0.1:{port}",
                handler_factory="flower_fixtures:make_sum_handler",
                root_cert=certs.ca_cert,
                auth_key=certs.party_private_keys[party.name],
                reconnect_s=3,
            )
            outcome[party.name] = None
        except BaseException as exc:
            outcome[party.name] = exc

    threads = [threading.Thread(target=serve, args=(party,)) for party in parties()]
    for thread in threads:
        thread.start()
    ticks: list[None] = []
    out = tmp_path / "out.json"
    result = launch_flower_server(
        tmp_path / "server",
        "flower_fixtures:record_rounds",
        {"rounds": "2", "timeout_s": "60", "out": str(out)},
        min_parties=2,
        host="127.0.0.1",
        port=port,
        tls=tls,
        party_public_keys=certs.party_public_keys,
        party_wait_s=90,
        on_tick=lambda: ticks.append(None),
    )
    for thread in threads:
        thread.join(timeout=60)  # each party stops reconnect_s after the SuperLink has gone
    assert outcome == {"alice": None, "bob": None}
    assert result.status == "finished:completed"
    assert result.exited == {}
    assert result.total_bytes and result.total_bytes > 0
    assert result.serverapp_log == tmp_path / "server" / "logs" / "serverapp.log"
    assert "Successfully installed mpctf-flower" in result.serverapp_log.read_text()
    assert len(ticks) >= 5
    received = json.loads(out.read_text())
    assert received["parties"] == ["alice", "bob"]
    # alice gets 1 byte, bob 2 bytes, each of value r in round r.
    got = {(r["round"], r["party"]): r["payload"] for r in received["replies"]}
    assert got == {(1, "alice"): "alice:1", (1, "bob"): "bob:2", (2, "alice"): "alice:2", (2, "bob"): "bob:4"}
    assert all(r["error"] is None and 0 < r["seconds"] < 60 for r in received["replies"])
    assert left_behind(tmp_path) == []


def test_a_party_dying_mid_run_and_the_drivers_error(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(DataError, match=r"^driver gave up$"):
        launch_flower_local(
            tmp_path,
            parties(bob={"crash_on_call": "2"}),
            "flower_fixtures:record_rounds",
            {"rounds": "2", "timeout_s": "60", "out": str(out), "then_fail": "driver gave up"},
            handler_factory="flower_fixtures:make_sum_handler",
        )
    replies = {(r["round"], r["party"]): r for r in json.loads(out.read_text())["replies"]}
    assert replies[2, "alice"]["payload"] == "alice:2"
    crashed = replies[2, "bob"]
    assert crashed["payload"] is None
    assert crashed["error"].startswith("party worker at 127.0.0.1:")
    assert crashed["seconds"] < 60  # the ClientApp noticed the dead worker: no waiting for the timeout
    assert left_behind(tmp_path) == []


def test_a_worker_that_fails_to_start_is_a_launch_error(tmp_path: Path) -> None:
    with pytest.raises(LaunchError) as caught:
        launch_flower_local(
            tmp_path,
            parties(),
            "flower_fixtures:record_rounds",
            {},
            handler_factory="flower_fixtures:no_such_factory",
        )
    message = str(caught.value)
    # Both workers import the same missing factory; whichever exits first is reported.
    assert re.match(r"worker-(alice|bob) exited with code 1; log ", message), message
    assert "AttributeError" in message
    assert "\n" not in message
    assert left_behind(tmp_path) == []
