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


def read_metrics(path: Path) -> list[Record]:
    """All complete records of a metrics file (a torn last line from a crash is skipped)."""
    return list(iter_records(path.read_text().splitlines()))


def iter_records(lines: list[str]) -> Iterator[Record]:
    for line in lines:
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
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
        for record in iter_records(complete.decode().splitlines()):
            for listener in self.listeners:
                listener(record)
