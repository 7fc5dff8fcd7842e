"""Flower command lines, config files and the readers of the flwr CLI's JSON (no processes)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from mpctf.errors import ConfigError, DataError, FederationError
from mpctf.runtime.flower import commands, protocol


def test_run_config_round_trips_through_toml() -> None:
    settings = {"config-path": '/a b/c "q".yaml', "run-dir": "C:\\runs\\x", "odd": "tab\there\x7f ünï 🙂"}
    text = protocol.run_config("pkg.mod:drive", settings, min_parties=3, party_wait_s=90)
    parsed = tomllib.loads(text)
    assert parsed[protocol.RUN_DRIVER] == "pkg.mod:drive"
    assert json.loads(parsed[protocol.RUN_SETTINGS]) == settings
    assert parsed[protocol.RUN_MIN_PARTIES] == 3
    assert parsed[protocol.RUN_PARTY_WAIT_S] == 90.0


def test_run_config_keys_are_declared_by_the_app() -> None:
    # Flower refuses a --run-config key the app's pyproject.toml does not declare.
    declared = tomllib.loads((protocol.APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    text = protocol.run_config("m:f", {}, min_parties=1, party_wait_s=1)
    assert set(tomllib.loads(text)) == set(declared)
    for key, value in tomllib.loads(text).items():
        assert type(value) is type(declared[key]), key


def test_node_config_round_trips_through_toml() -> None:
    parsed = tomllib.loads(protocol.node_config("bob", "127.0.0.1:5000", Path("/x y/authkey")))
    assert parsed == {
        protocol.NODE_PARTY: "bob",
        protocol.NODE_WORKER: "127.0.0.1:5000",
        protocol.NODE_AUTHKEY_FILE: "/x y/authkey",
    }


def test_driver_error_survives_flower_status_details() -> None:
    details = "ServerApp failed with exception: " + protocol.tag_error(ConfigError("`rounds` must be > 0"))
    error = protocol.untag_error(details)
    assert type(error) is ConfigError
    assert str(error) == "`rounds` must be > 0"


@pytest.mark.parametrize(
    "details",
    ["", "ServerApp failed with exception: boom", "mpctf-error NotAnError: x", "mpctf-error Path: x"],
)
def test_untagged_details_give_no_driver_error(details: str) -> None:
    assert protocol.untag_error(details) is None


def test_superlink_command_line_with_and_without_tls() -> None:
    plain = commands.superlink_argv(9093)
    assert plain[:5] == ["flower-superlink", "--host", "127.0.0.1", "--port", "9093"]
    assert "--disable-runtime-dependency-installation" in plain
    assert "--insecure" in plain
    tls = commands.superlink_argv(
        9093, host="0.0.0.0", tls=commands.ServerTls(Path("ca"), Path("crt"), Path("key"))
    )
    assert "--insecure" not in tls
    assert tls[tls.index("--ssl-ca-certfile") + 1] == "ca"
    assert tls[tls.index("--ssl-certfile") + 1] == "crt"
    assert tls[tls.index("--ssl-keyfile") + 1] == "key"
    assert "--enable-supernode-auth" not in tls
    assert "--enable-supernode-auth" in commands.superlink_argv(9093, node_auth=True)


def test_supernode_command_line() -> None:
    argv = commands.supernode_argv("h:1", 9100, Path("n.toml"))
    assert argv[argv.index("--superlink") + 1] == "h:1"
    assert argv[argv.index("--port") + 1] == "9100"
    assert argv[argv.index("--node-config") + 1] == "n.toml"
    assert "--insecure" in argv
    secure = commands.supernode_argv("h:1", 9100, Path("n.toml"), root_cert=Path("ca.pem"))
    assert "--insecure" not in secure
    assert secure[secure.index("--root-certificates") + 1] == "ca.pem"
    assert "--auth-supernode-private-key" not in secure
    signed = commands.supernode_argv("h:1", 9100, Path("n.toml"), auth_key=Path("parties/bob"))
    assert signed[signed.index("--auth-supernode-private-key") + 1] == "parties/bob"


def test_register_command_line() -> None:
    argv = commands.register_argv(Path("keys/bob.pub"), "bob")
    assert argv[:4] == ["flwr", "supernode", "register", "keys/bob.pub"]
    assert argv[argv.index("--name") + 1] == "bob"
    assert argv[-2:] == ["--format", "json"]


def test_registered_node_id_and_its_binding_travel_in_the_run_config() -> None:
    # `flwr supernode register --format json` prints the node id Flower gave the key.
    data = commands.parse_json(
        '✅ SuperNode 9007199254740993 registered\n{"success": true, "node-id": 9007199254740993}', "x"
    )
    nodes = {"alice": commands.node_id_of(data), "bob": 7}
    text = protocol.run_config("m:f", {}, min_parties=1, party_wait_s=1, party_nodes=nodes)
    assert protocol.party_nodes_of(tomllib.loads(text)[protocol.RUN_PARTY_NODES]) == {
        "alice": 9007199254740993,
        "bob": 7,
    }
    # Without node authentication there is no binding.
    unbound = protocol.run_config("m:f", {}, min_parties=1, party_wait_s=1)
    assert protocol.party_nodes_of(tomllib.loads(unbound)[protocol.RUN_PARTY_NODES]) is None


def test_cli_config_holds_one_default_connection() -> None:
    plain = tomllib.loads(commands.cli_config("127.0.0.1:9093"))
    assert plain["superlink"]["default"] == commands.CONNECTION
    assert plain["superlink"][commands.CONNECTION] == {"address": "127.0.0.1:9093", "insecure": True}
    secure = tomllib.loads(commands.cli_config("h:1", root_cert=Path("/c/ca.pem")))
    assert secure["superlink"][commands.CONNECTION] == {"address": "h:1", "root-certificates": "/c/ca.pem"}


def test_parse_json_skips_leading_text_and_reports_failures() -> None:
    assert commands.parse_json('Using SuperLink: x\n{"success": true, "run-id": "42"}', "run") == {
        "success": True,
        "run-id": "42",
    }
    with pytest.raises(FederationError, match=r"run failed: Connection refused"):
        commands.parse_json('{"success": false, "error-message": "Connection\\n refused"}', "run")
    with pytest.raises(FederationError, match="unreadable output"):
        commands.parse_json("Traceback ...", "run")


def test_run_status_and_online_nodes() -> None:
    data = {
        "success": True,
        "runs": [
            {
                "status": "finished:failed",
                "status-details": "ServerApp failed: x",
                "network-traffic": {"total-bytes": 1234},
            }
        ],
    }
    status = commands.run_status_of(data)
    assert status == commands.RunStatus("finished", "failed", "ServerApp failed: x", 1234)
    assert status.finished and not status.succeeded
    running = commands.run_status_of({"runs": [{"status": "running", "status-details": "N/A"}]})
    assert (running.finished, running.details, running.total_bytes) == (False, "", None)
    nodes = {"nodes": [{"status": "online"}, {"status": "offline"}, {"status": "online"}]}
    assert commands.online_nodes(nodes) == 2


def test_run_error_prefers_the_drivers_own_error() -> None:
    log = Path("logs/serverapp.log")
    failed = commands.RunStatus(
        "finished",
        "failed",
        "ServerApp failed with exception: mpctf-error DataError: party 'a' has 3 rows",
        None,
    )
    error = commands.run_error(failed, log)
    assert type(error) is DataError and str(error) == "party 'a' has 3 rows"
    crashed = commands.RunStatus("finished", "failed", "ServerApp failed with exception: KeyError 'x'", None)
    error = commands.run_error(crashed, log)
    assert type(error) is FederationError
    assert str(error) == (
        "the Flower run ended failed: ServerApp failed with exception: KeyError 'x' (see logs/serverapp.log)"
    )


def test_supernode_refusal_is_read_from_its_last_logged_exit() -> None:
    refused = "Connection attempt failed\nERROR: Exit Code: 305\nFailed to activate SuperNode.\n"
    assert commands.supernode_refused(refused)
    assert not commands.supernode_refused(refused + "Starting Flower SuperNode\nERROR: Exit Code: 300\n")
    assert not commands.supernode_refused("SuperNode terminated gracefully.\n")
