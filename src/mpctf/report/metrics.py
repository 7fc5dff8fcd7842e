"""The run's metrics: one JSON object per line in ``metrics.jsonl``, appended as events happen.

Events: ``run_start``, ``plan`` (one per party), ``party_round`` (one per party per round: loss, samples,
tokens, seconds, bytes up/down, status), ``round`` (global accuracy, eval loss, wall time, bytes), ``run_end``.
A ``round`` between two evaluations (``data.eval.every_rounds``) has no score keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mpctf.errors import DataError

Record = dict[str, Any]


def score_cell(record: Record, key: str) -> str:
    """A round's score ``key`` to four decimals, or ``—`` for a round that was not scored."""
    return f"{record[key]:.4f}" if key in record else "—"


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (flushed per line, so a crash loses nothing already written)."""

    def __init__(self, path: Path, listeners: list[Callable[[Record], None]] | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.listeners = listeners or []

    def write(self, event: str, **fields: Any) -> Record:
        record = {"event": event, "time": time.time(), **fields}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        for listener in self.listeners:
            listener(record)
        return record


#: Keys the report needs in each kind of record.
REQUIRED_KEYS = {
    "round": ("round",),
    "party_round": ("round", "party", "status"),
    "plan": (
        "party",
        "num_samples",
        "num_tokens",
        "chunk_samples",
        "micro_batch",
        "grad_accum",
        "rounds_per_epoch",
    ),
}


def read_metrics(path: Path, *, strict: bool = False) -> list[Record]:
    """All complete records of a metrics file; a torn last line (no newline: a crash mid-write) is skipped.

    By default other unreadable lines are skipped too (a run resumed after such a crash appends after the torn
    line). ``strict`` (re-rendering a report on request) raises :class:`DataError` naming ``file:line`` instead,
    and when the file holds no record at all."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    complete = data.split(b"\n")[:-1]  # what follows the last newline is torn (or empty)
    records = []
    for n, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(_record(line, strict=strict))
        except ValueError as exc:
            if strict:
                raise DataError(f"{path}:{n}: {exc}") from None
    if strict and not records:
        raise DataError(f"{path}: holds no metrics records")
    return records


def _record(line: bytes, *, strict: bool = False) -> Record:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        raise ValueError('not a metrics record (a JSON object with an "event")')
    missing = [k for k in REQUIRED_KEYS.get(record["event"], ()) if strict and k not in record]
    if missing:
        raise ValueError(f"a {record['event']!r} record without {', '.join(missing)}")
    return record


def iter_records(lines: list[bytes]) -> Iterator[Record]:
    """The readable records among ``lines`` (each one line of a metrics file, without its newline)."""
    for line in lines:
        try:
            yield _record(line)
        except ValueError:
            continue


class MetricsTail:
    """Follows a growing ``metrics.jsonl`` written by another process, handing new records to listeners."""

    def __init__(self, path: Path, listeners: list[Callable[[Record], None]]) -> None:
        self.path, self.listeners, self._offset = path, listeners, 0

    def poll(self) -> None:
        """Dispatch every complete record appended since the last call."""
        if not self.path.is_file():
            return
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for record in iter_records(complete.split(b"\n")[:-1]):
            for listener in self.listeners:
                listener(record)
