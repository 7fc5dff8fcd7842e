"""Names the launcher, the ServerApp and the ClientApp agree on (no ``flwr`` import: the launcher reads it too).

The Flower app shipped to every SuperNode is the folder :data:`APP_DIR`: only its ``pyproject.toml``, which names
the ServerApp and ClientApp modules of this package and declares the run-config keys below (Flower refuses a
``--run-config`` key the app does not declare).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mpctf import errors

#: The Flower app folder handed to ``flwr run``.
APP_DIR = Path(__file__).resolve().parent / "app"

# Run-config keys (declared with defaults in app/pyproject.toml).
RUN_DRIVER = "driver"
RUN_SETTINGS = "settings"
RUN_MIN_PARTIES = "min-parties"
RUN_PARTY_WAIT_S = "party-wait-s"
#: JSON ``{party: node id}`` of the keys the server registered (node authentication); ``{}`` when it is off.
RUN_PARTY_NODES = "party-nodes"

# Node-config keys, set per SuperNode with --node-config and read by the ClientApp.
NODE_PARTY = "party"
NODE_WORKER = "worker-address"
NODE_AUTHKEY_FILE = "authkey-file"

# Message types: discovery asks a node for its party name; train carries one task.
QUERY = "query"
TRAIN = "train"

# Record keys inside a message.
RECORD_TASK = "mpctf"
ARRAY_PAYLOAD = "payload"
RECORD_META = "mpctf-meta"
META_TIMEOUT_S = "timeout-s"
META_PARTY = "party"

#: Marks a driver's MpctfError in the run's status details, where Flower keeps only ``str(exception)``.
ERROR_TAG = "mpctf-error "


def toml_value(value: str | int | float | bool) -> str:
    """One TOML scalar. Strings use JSON escaping, which TOML basic strings accept, except DEL, escaped apart."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_table(values: Mapping[str, str | int | float | bool]) -> str:
    """``key = value`` lines for a flat TOML document (Flower's --run-config and --node-config files)."""
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in values.items())


def run_config(
    driver: str,
    settings: Mapping[str, str],
    *,
    min_parties: int,
    party_wait_s: float,
    party_nodes: Mapping[str, int] | None = None,
) -> str:
    """The ``--run-config`` TOML of one run; ``settings`` travel as one JSON string for the driver.

    ``party_nodes`` (party name -> the node id Flower gave its registered key) binds each name to one key.
    """
    return toml_table(
        {
            RUN_DRIVER: driver,
            RUN_SETTINGS: json.dumps(dict(settings), sort_keys=True),
            RUN_MIN_PARTIES: min_parties,
            RUN_PARTY_WAIT_S: float(party_wait_s),
            RUN_PARTY_NODES: json.dumps(dict(party_nodes or {}), sort_keys=True),
        }
    )


def party_nodes_of(value: object) -> dict[str, int] | None:
    """The ``{party: node id}`` binding of a run config's :data:`RUN_PARTY_NODES`; ``None`` when there is none."""
    nodes = json.loads(str(value or "{}"))
    return {str(party): int(node) for party, node in nodes.items()} or None


def node_config(party: str, worker_address: str, authkey_file: Path) -> str:
    """The ``--node-config`` TOML of one party's SuperNode."""
    return toml_table({NODE_PARTY: party, NODE_WORKER: worker_address, NODE_AUTHKEY_FILE: str(authkey_file)})


def tag_error(exc: errors.MpctfError) -> str:
    """``mpctf-error ClassName: message``: how the ServerApp reports a driver's error (see :func:`untag_error`)."""
    return f"{ERROR_TAG}{type(exc).__name__}: {exc}"


def untag_error(details: str) -> errors.MpctfError | None:
    """The error :func:`tag_error` wrote somewhere in ``details``, rebuilt with its class; ``None`` if absent."""
    _, tag, tagged = details.partition(ERROR_TAG)
    name, sep, message = tagged.partition(": ")
    cls = getattr(errors, name, None) if tag and sep else None
    if not (isinstance(cls, type) and issubclass(cls, errors.MpctfError)):
        return None
    return cls(message.strip())
