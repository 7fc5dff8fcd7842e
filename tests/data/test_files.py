"""A party's data file in each format, read through `datasets` into memory-mapped Arrow rows."""

from __future__ import annotations

import csv
import json
import re
import tempfile
from pathlib import Path

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpctf.config import DatasetConfig
from mpctf.data.files import ArrowRows
from mpctf.data.sources import load_rows, read_file
from mpctf.errors import DataError


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MPCTF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def assert_memory_mapped(rows: object, folder: Path) -> None:
    """Backed by an Arrow file under ``folder``, not by a table in memory."""
    assert isinstance(rows, ArrowRows)
    assert rows.cache_files and all(Path(f).is_relative_to(folder) for f in rows.cache_files)
    assert type(rows.dataset.data).__name__ == "MemoryMappedTable"


def test_jsonl_is_split_at_newlines_only_and_memory_mapped(tmp_path: Path, cache_in_tmp: Path) -> None:
    path = tmp_path / "d.jsonl"
    records = [{"text": "one\u2028two\u0085three\u2029", "label": 1}, {"text": "b", "label": 2, "x": None}]
    path.write_text(
        "\n\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n", encoding="utf-8"
    )
    rows = read_file(path)
    assert_memory_mapped(rows, cache_in_tmp)
    # Numbers become their text; a null field is a missing one.
    assert rows == [{"text": "one\u2028two\u0085three\u2029", "label": "1"}, {"text": "b", "label": "2"}]
    assert rows[-1] == {"text": "b", "label": "2"} and rows[:1] == [rows[0]]


def test_a_jsonl_column_with_mixed_types_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n')
    assert [r["label"] for r in read_file(path)] == ["1", "x"]


def test_csv_keeps_quoted_newlines_and_every_value_as_text(tmp_path: Path, cache_in_tmp: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"multi\nline, quoted",01\n"",NA\n" a\u2028b ",1.0\n', encoding="utf-8")
    rows = read_file(path)
    assert_memory_mapped(rows, cache_in_tmp)
    assert list(rows) == [
        {"text": "multi\nline, quoted", "label": "01"},
        {"text": "", "label": "NA"},
        {"text": " a\u2028b ", "label": "1.0"},
    ]


def test_a_short_csv_row_is_named_by_its_line_after_a_quoted_newline(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"a\nb",1\nc\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:4: the row's field count differs"):
        read_file(path)


def test_parquet_is_read(tmp_path: Path, cache_in_tmp: Path) -> None:
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_dict({"text": ["a\nb", "c"], "label": [0, 1]}).to_parquet(str(path))
    rows = read_file(path)
    assert_memory_mapped(rows, cache_in_tmp)
    assert list(rows) == [{"text": "a\nb", "label": "0"}, {"text": "c", "label": "1"}]


def test_a_save_to_disk_folder_is_mapped_in_place(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["a", "b", "c"], "group": ["x", "y", "x"]}).save_to_disk(str(folder))
    rows = read_file(folder)
    assert_memory_mapped(rows, folder)
    assert [r["text"] for r in rows] == ["a", "b", "c"]
    # `where` and `max_samples` select rows without copying them out of the Arrow file.
    kept = load_rows(DatasetConfig(path=folder, where={"group": ["x"]}, max_samples=1), seed=0)
    assert isinstance(kept, ArrowRows) and len(kept) == 1 and kept[0]["group"] == "x"


def test_a_dataset_dict_folder_or_an_unknown_format_is_a_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "dict"
    split = datasets.Dataset.from_dict({"text": ["a"]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(folder))
    with pytest.raises(
        DataError, match=r"a DatasetDict with splits (train, test|test, train); give the folder"
    ):
        read_file(folder)
    with pytest.raises(DataError, match=r"not one written by Dataset\.save_to_disk"):
        read_file(tmp_path)
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported data format '\.xlsx'; use \.jsonl, \.json, \.csv"):
        read_file(tmp_path / "d.xlsx")


def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: each line must be a JSON object$"):
        read_file(path)


def test_chat_rows_keep_their_messages(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    chats = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    ]
    path.write_text("".join(json.dumps({"messages": m, "id": i}) + "\n" for i, m in enumerate(chats)))
    assert read_file(path) == [{"messages": m, "id": str(i)} for i, m in enumerate(chats)]


# Any text but lone surrogates, which UTF-8 cannot encode.
texts = st.lists(st.text(), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts)
def test_jsonl_round_trips_any_text(values: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for v in values:
                fh.write(json.dumps({"text": v}, ensure_ascii=False) + "\n")
        assert [r["text"] for r in read_file(path)] == values


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts, texts)
def test_csv_round_trips_any_text(first: list[str], second: list[str]) -> None:
    rows = list(zip(first, second, strict=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["a", "b"])
            writer.writerows(rows)
        assert [(r["a"], r["b"]) for r in read_file(path)] == rows
