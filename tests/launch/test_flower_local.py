"""The local Flower launcher on real processes: SuperLink, two party workers and SuperNodes, a test driver.

Each run costs about half a minute (Flower's SuperNodes poll every 3 s), so these few tests cover the whole
path at once: the split start with TLS and party keys (and a registered key claiming another party's name,
refused), the local launch, results and per-reply seconds, a party crashing mid-run, the driver's own error
reaching the caller, a worker that fails to start, a party whose server never answers, and no process left
behind.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
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
    """``mpctf server`` and two ``mpctf party`` launches (threads here, hosts in real life), each its own folder.

    After round 1 an impostor joins: a SuperNode with carol's registered key (carol never starts) that says it is
    bob. Flower lets the key in; the server refuses the name, so round 2 is still alice's and bob's.
    """
    certs = create_certificates(tmp_path / "certs", ["127.0.0.1"], ["alice", "bob", "carol"])
    tls = ServerTls(certs.ca_cert, certs.server_cert, certs.server_key)
    port = free_port()
    outcome: dict[str, BaseException | None] = {}
    round_1_done = tmp_path / "round-1-done"

    def serve(party: PartySpec, key: str, after: Path | None = None) -> None:
        try:
            while after is not None and not after.exists():
                time.sleep(0.2)
            serve_flower_party(
                tmp_path / key,
                party,
                superlink=f"127.0.0.1:{port}",
                handler_factory="flower_fixtures:make_sum_handler",
                root_cert=certs.ca_cert,
                auth_key=certs.party_private_keys[key],
                reconnect_s=3,
            )
            outcome[key] = None
        except BaseException as exc:
            outcome[key] = exc

    jobs = [(party, party.name, None) for party in parties()]
    jobs.append((PartySpec("bob", {"party": "mallory"}), "carol", round_1_done))
    threads = [threading.Thread(target=serve, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    ticks: list[None] = []
    out = tmp_path / "out.json"
    settings = {"rounds": "2", "timeout_s": "60", "out": str(out), "round_1_done": str(round_1_done)}
    result = launch_flower_server(
        tmp_path / "server",
        "flower_fixtures:record_rounds",
        {**settings, "nodes_before_round_2": "3"},
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
    assert outcome == {"alice": None, "bob": None, "carol": None}
    assert result.status == "finished:completed"
    assert result.exited == {}
    assert result.total_bytes and result.total_bytes > 0
    assert result.serverapp_log == tmp_path / "server" / "logs" / "serverapp.log"
    server_log = result.serverapp_log.read_text()
    assert "Successfully installed mpctf-flower" in server_log
    assert len(ticks) >= 5
    received = json.loads(out.read_text())
    assert received["parties"] == ["alice", "bob"]
    # alice gets 1 byte, bob 2 bytes, each of value r in round r; the impostor ("mallory") never gets a task.
    got = {(r["round"], r["party"]): r["payload"] for r in received["replies"]}
    assert got == {(1, "alice"): "alice:1", (1, "bob"): "bob:2", (2, "alice"): "alice:2", (2, "bob"): "bob:4"}
    assert all(r["error"] is None and 0 < r["seconds"] < 60 for r in received["replies"])
    refused = re.search(
        r"node (\d+) claims to be party 'bob' but its key is registered for party 'carol'", server_log
    )
    assert refused, server_log[-3000:]
    assert "moved from" not in server_log
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


def test_a_party_whose_server_never_answers_says_so(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    said: list[str] = []
    with pytest.raises(LaunchError) as caught:
        serve_flower_party(
            tmp_path,
            PartySpec("alice", {"party": "alice"}),
            superlink=f"127.0.0.1:{port}",
            handler_factory="flower_fixtures:make_sum_handler",
            server_wait_s=2,
            say=said.append,
        )
    assert said == [
        f"party 'alice': starting its worker (logs in {tmp_path / 'logs'})",
        f"party 'alice': waiting for the server at 127.0.0.1:{port} (giving up after 2 s)",
    ]
    assert str(caught.value) == f"party 'alice': the server at 127.0.0.1:{port} did not answer within 2 s"
    assert left_behind(tmp_path) == []
