"""The ClientApp: a thin forwarder from Flower to the party's long-lived worker.

Flower starts a fresh process for every message, so this module stays light (no torch): it reads the SuperNode's
node config (party name, worker address, key file), passes the task bytes to the worker with
:func:`mpctf.runtime.party_link.call` and wraps the reply. A failure becomes an error reply of one line.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from mpctf.runtime import party_link
from mpctf.runtime.flower import protocol, wire

app = ClientApp()


@app.query()
def query(message: Message, context: Context) -> Message:
    """Discovery: answer with this node's party name."""
    party = str(context.node_config[protocol.NODE_PARTY])
    return Message(
        RecordDict({protocol.RECORD_META: ConfigRecord({protocol.META_PARTY: party})}), reply_to=message
    )


@app.train()
def train(message: Message, context: Context) -> Message:
    """Forward one task to the party worker and return its reply bytes."""
    config = context.node_config
    address = str(config[protocol.NODE_WORKER])
    try:
        authkey = party_link.read_authkey(Path(str(config[protocol.NODE_AUTHKEY_FILE])))
        timeout_s = float(wire.meta_of(message)[protocol.META_TIMEOUT_S])
        reply = party_link.call(address, authkey, wire.payload_of(message), timeout_s)
    except party_link.RemoteError as exc:
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(exc)), reply_to=message)
    except Exception as exc:  # the worker is unreachable, died or timed out: the party's reply is this error
        reason = f"party worker at {address}: {party_link.one_line(exc)}"
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
    return Message(wire.payload_content(reply, {}), reply_to=message)
