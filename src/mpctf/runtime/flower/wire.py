"""Opaque bytes in and out of Flower messages.

A payload rides as one ``Array`` of dtype uint8 whose ``data`` is the payload itself (stype ``raw``) rather than
an ``.npy`` serialization: Flower chunks ``data`` for transfer either way, and skipping numpy's save/load spares
two full copies of what may be gigabytes.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from mpctf.runtime.flower import protocol

RAW_STYPE = "raw"


def payload_content(payload: bytes, meta: dict[str, str | float]) -> RecordDict:
    """A message body carrying ``payload`` and a few scalar settings."""
    array = Array(dtype="uint8", shape=(len(payload),), stype=RAW_STYPE, data=payload)
    return RecordDict(
        {
            protocol.RECORD_TASK: ArrayRecord({protocol.ARRAY_PAYLOAD: array}),
            protocol.RECORD_META: ConfigRecord(meta),
        }
    )


def payload_of(message: Message) -> bytes:
    """The payload bytes of a message built by :func:`payload_content`."""
    return message.content.array_records[protocol.RECORD_TASK][protocol.ARRAY_PAYLOAD].data


def meta_of(message: Message) -> ConfigRecord:
    """The scalar settings of a message built by :func:`payload_content`."""
    return message.content.config_records[protocol.RECORD_META]


def error_of(message: Message) -> str | None:
    """The reply's error as one line, or ``None`` when it carries content."""
    if not message.has_error():
        return None
    reason = " ".join((message.error.reason or "").split())
    return reason or f"Flower error code {message.error.code}"
