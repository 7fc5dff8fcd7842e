"""Command lines of Flower's processes and CLI, and readers of the CLI's JSON output (no ``flwr`` import).

Flower has no stable Python API for starting its services or submitting runs: the executables and the ``flwr``
CLI with ``--format json`` are the interface, and their flags move between releases, so they are spelled here
only. Every executable is named bare; the launcher puts the interpreter's ``bin`` folder first on ``PATH``
because Flower itself starts ``flower-superexec`` and ``flwr-clientapp`` that way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpctf.errors import FederationError, MpctfError
from mpctf.runtime.flower import protocol

#: The name of the SuperLink connection in each launch's own ``$FLWR_HOME/config.toml``.
CONNECTION = "mpctf"

#: Flower's code for "the SuperNode could not connect", logged as ``Exit Code: 305`` (the process exits with 1).
_SUPERNODE_REFUSED = 305
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")

#: Environment that turns off Flower's telemetry and its update check.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


@dataclass(frozen=True)
class ServerTls:
    """PEM files of the SuperLink's TLS: the CA certificate that parties and the CLI trust, and the server's pair."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class PartyKey:
    """A party's SuperNode authentication key pair (OpenSSH ECDSA, as ``mpctf certs`` writes them).

    The SuperLink registers the public key; the party's SuperNode signs its requests with the private key.
    """

    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class RunStatus:
    """What ``flwr ls --run-id`` says of a run."""

    status: str
    sub_status: str
    details: str
    total_bytes: int | None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def succeeded(self) -> bool:
        return self.finished and self.sub_status == "completed"


def superlink_argv(
    port: int, *, host: str = "127.0.0.1", tls: ServerTls | None = None, node_auth: bool = False
) -> list[str]:
    """``flower-superlink`` serving every API on ``host:port``, never installing dependencies per run.

    With ``node_auth`` only SuperNodes whose public key was registered (:func:`register_argv`) may connect.
    """
    argv = [
        "flower-superlink",
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if node_auth:
        argv.append("--enable-supernode-auth")
    if tls is None:
        return [*argv, "--insecure"]
    return [
        *argv,
        "--ssl-ca-certfile",
        str(tls.ca_cert),
        "--ssl-certfile",
        str(tls.cert),
        "--ssl-keyfile",
        str(tls.key),
    ]


def supernode_argv(
    superlink: str,
    runtime_port: int,
    node_config_file: Path,
    *,
    root_cert: Path | None = None,
    auth_key: Path | None = None,
) -> list[str]:
    """``flower-supernode`` of one party; ``runtime_port`` must differ between SuperNodes of one host.

    It retries an absent SuperLink forever (and, in Flower 1.41, does not exit even when told to give up): the
    party launcher decides when the federation is gone. ``auth_key`` is the party's private key.
    """
    argv = ["flower-supernode", "--superlink", superlink, "--port", str(runtime_port)]
    argv += ["--node-config", str(node_config_file)]
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key)]
    return [*argv, "--insecure"] if root_cert is None else [*argv, "--root-certificates", str(root_cert)]


def register_argv(public_key: Path, party: str) -> list[str]:
    """Let the SuperNode holding the private half of ``public_key`` join (prints JSON with its node id)."""
    return ["flwr", "supernode", "register", str(public_key), CONNECTION, "--name", party, "--format", "json"]


def cli_config(superlink: str, *, root_cert: Path | None = None) -> str:
    """``$FLWR_HOME/config.toml`` holding the one connection :data:`CONNECTION` to ``superlink``."""
    security = {"insecure": True} if root_cert is None else {"root-certificates": str(root_cert)}
    return (
        f"[superlink]\ndefault = {protocol.toml_value(CONNECTION)}\n\n[superlink.{CONNECTION}]\n"
        + protocol.toml_table({"address": superlink, **security})
    )


def run_argv(run_config_file: Path) -> list[str]:
    """Submit the MPCTF app with the given run-config file; prints JSON with the run id."""
    return [
        "flwr",
        "run",
        str(protocol.APP_DIR),
        CONNECTION,
        "--run-config",
        str(run_config_file),
        "--format",
        "json",
    ]


def status_argv(run_id: str) -> list[str]:
    return ["flwr", "ls", CONNECTION, "--run-id", run_id, "--format", "json"]


def log_argv(run_id: str) -> list[str]:
    return ["flwr", "log", run_id, CONNECTION, "--show"]


def stop_argv(run_id: str) -> list[str]:
    return ["flwr", "stop", run_id, CONNECTION]


def nodes_argv() -> list[str]:
    return ["flwr", "supernode", "list", CONNECTION, "--format", "json"]


def supernode_refused(log_text: str) -> bool:
    """Whether the last exit a SuperNode logged is the SuperLink refusing it (e.g. its key not yet registered)."""
    codes = _EXIT_CODE.findall(log_text)
    return bool(codes) and int(codes[-1]) == _SUPERNODE_REFUSED


def parse_json(stdout: str, what: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` command printed; ``FederationError`` if it reports failure."""
    start = stdout.find("{")
    try:
        data = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise FederationError(f"{what}: unreadable output from the flwr CLI: {_one_line(stdout)[:300]!r}")
    if not data.get("success", False):
        raise FederationError(f"{what} failed: {_one_line(str(data.get('error-message', data)))}")
    return data


def node_id_of(data: dict[str, Any]) -> int:
    """The node id ``flwr supernode register`` gave a key: the id its SuperNode will have, restart after restart."""
    return int(data["node-id"])


def run_id_of(data: dict[str, Any]) -> str:
    return str(data["run-id"])


def online_nodes(data: dict[str, Any]) -> int:
    """How many SuperNodes ``flwr supernode list`` reports online."""
    return sum(1 for node in data.get("nodes", []) if node.get("status") == "online")


def run_status_of(data: dict[str, Any]) -> RunStatus:
    run = data["runs"][0]
    status, _, sub_status = str(run["status"]).partition(":")
    details = str(run.get("status-details", ""))
    total = run.get("network-traffic", {}).get("total-bytes")
    return RunStatus(
        status, sub_status, "" if details == "N/A" else details, int(total) if total is not None else None
    )


def run_error(status: RunStatus, log_path: Path) -> MpctfError:
    """The error to raise for a run that did not complete: the driver's own, else a ``FederationError``."""
    if (driver_error := protocol.untag_error(status.details)) is not None:
        return driver_error
    reason = _one_line(status.details) or "no details"
    return FederationError(
        f"the Flower run ended {status.sub_status or status.status}: {reason} (see {log_path})"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
