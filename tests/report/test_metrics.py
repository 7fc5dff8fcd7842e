"""Reading metrics.jsonl: torn lines from a crash are skipped, anything else wrong is named by file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpctf.errors import DataError
from mpctf.report.metrics import MetricsTail, read_metrics
from mpctf.report.render import render_report

ROUND = {"event": "round", "round": 1, "accuracy": 0.5}


def _metrics(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(data)
    return path


def test_text_with_unicode_line_separators_is_one_record(tmp_path: Path) -> None:
    record = {"event": "round", "round": 1, "reason": "a\u2028b\u0085c"}
    path = _metrics(tmp_path, (json.dumps(record, ensure_ascii=False) + "\n").encode())
    assert read_metrics(path) == [record] == read_metrics(path, strict=True)
    seen: list[dict] = []
    MetricsTail(path, [seen.append]).poll()
    assert seen == [record]


def test_a_torn_last_line_is_skipped_even_when_strict(tmp_path: Path) -> None:
    path = _metrics(tmp_path, (json.dumps(ROUND) + '\n{"event": "rou').encode())
    assert read_metrics(path, strict=True) == [ROUND]


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (b"this is not json\n", 1, "not valid JSON"),
        (json.dumps(ROUND).encode() + b"\n[1, 2]\n", 2, "not a metrics record"),
        (b'{"event": "round"}\n', 1, "a 'round' record without round"),
        (b'{"event": "run_start"}\n\xff\xfe\n', 2, "not UTF-8 text"),
    ],
)
def test_strict_reading_names_the_bad_line(tmp_path: Path, data: bytes, line: int, reason: str) -> None:
    path = _metrics(tmp_path, data)
    with pytest.raises(DataError) as info:
        read_metrics(path, strict=True)
    assert str(info.value).startswith(f"{path}:{line}: {reason}")
    assert "\n" not in str(info.value)


def test_an_empty_metrics_file_is_an_error_when_strict(tmp_path: Path) -> None:
    path = _metrics(tmp_path, b"")
    with pytest.raises(DataError, match="holds no metrics records"):
        render_report(tmp_path, strict=True)
    assert read_metrics(path) == []


def test_strict_report_of_a_mistyped_record_names_the_file(tmp_path: Path) -> None:
    _metrics(tmp_path, b'{"event": "round", "round": 1, "accuracy": "high"}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl: a record has a missing or mistyped field"):
        render_report(tmp_path, strict=True)
    assert not (tmp_path / "report.md").exists()
