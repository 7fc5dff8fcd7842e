"""A party's own data file, read through Hugging Face ``datasets`` into a memory-mapped Arrow table.

The format follows the path: ``.jsonl`` or ``.json`` (JSON Lines: one object per line, records separated by
``\n`` alone), ``.csv`` (a header line; quoted fields may hold newlines), ``.parquet``, or a folder written by
``Dataset.save_to_disk``. A text or Parquet file is converted once into an Arrow file in ``$MPCTF_CACHE/datasets``
(reused while the file is unchanged) and memory-mapped from there; a saved folder is mapped in place. So a
multi-GB file is never held in memory at once: a row becomes Python objects only when it is used.

A row is a ``dict`` of strings (numbers and booleans as their text; null and missing fields left out); nested
values, such as a chat row's ``messages``, stay lists and dicts.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mpctf.errors import DataError

Row = dict[str, Any]
_BATCH = 1000
FORMATS = ".jsonl, .json, .csv, .parquet or a folder written by Dataset.save_to_disk"


class ArrowRows(Sequence[Row]):
    """The rows of a memory-mapped ``datasets.Dataset``, converted to :data:`Row` as they are read."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    @property
    def fields(self) -> list[str]:
        return list(self.dataset.column_names)

    def __len__(self) -> int:
        return int(self.dataset.num_rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return to_row(self.dataset[index])

    def __iter__(self) -> Iterator[Row]:
        yield from self.iter_columns(self.fields)

    def iter_columns(self, fields: Iterable[str]) -> Iterator[Row]:
        """The rows with only ``fields``, read a batch at a time."""
        for batch in self.dataset.select_columns(list(fields)).iter(batch_size=_BATCH):
            for values in zip(*batch.values(), strict=True):
                yield to_row(dict(zip(batch, values, strict=True)))

    def select(self, indices: Sequence[int]) -> ArrowRows:
        """These rows, still memory-mapped (an index mapping over the same Arrow file)."""
        return ArrowRows(self.dataset.select(indices))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ArrowRows({len(self)} rows, fields {self.fields}, files {self.cache_files})"

    @property
    def cache_files(self) -> list[str]:
        """The Arrow files the rows are mapped from (empty for an in-memory table)."""
        return [f["filename"] for f in self.dataset.cache_files]


def to_row(record: dict[str, Any]) -> Row:
    """Scalars as text, nested values as they are, nulls dropped (a null field counts as a missing one)."""
    return {k: v if isinstance(v, list | dict) else str(v) for k, v in record.items() if v is not None}


def read_dataset_file(path: Path, cache_dir: Path) -> ArrowRows:
    """The rows of a party's data file or saved dataset folder; ``DataError`` naming the file (and line)."""
    if path.is_dir():
        return ArrowRows(_load_from_disk(path))
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".parquet"):
        raise DataError(f"{path}: unsupported data format {path.suffix!r}; use {FORMATS}")
    if suffix == ".csv":
        # pandas (under `datasets`) pads a row with too few fields silently and names no line for bytes that
        # are not UTF-8; one streaming pass of Python's csv module checks every row and names the line.
        header = check_csv(path)
    datasets = _quiet_datasets()
    try:
        if suffix == ".csv":
            features = datasets.Features({name: datasets.Value("string") for name in header})
            ds = datasets.Dataset.from_csv(
                str(path), cache_dir=str(cache_dir), features=features, keep_default_na=False, na_values=[]
            )
        elif suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(path), cache_dir=str(cache_dir))
        else:
            ds = datasets.Dataset.from_json(str(path), cache_dir=str(cache_dir))
        # pyarrow's JSON reader copies bytes that are not UTF-8 into string columns unchecked; a full validation
        # (C++, over the mapped file) finds them before a row fails to decode in the middle of training.
        ds.data.table.validate(full=True)
    except Exception as exc:  # pyarrow, pandas and datasets raise many types
        if suffix in (".jsonl", ".json"):
            # pyarrow names a row of a 10 MB block, not a line of the file: find the line by hand.
            check_json_lines(path)
        raise DataError(f"{path}: cannot read {suffix} data: {_one_line(exc)}") from None
    if ds.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    return ArrowRows(ds)


def _load_from_disk(path: Path) -> Any:
    datasets = _quiet_datasets()
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise DataError(
            f"{path}: a DatasetDict with splits {', '.join(splits)}; give the folder of one split, "
            f"e.g. {path / (splits[0] if splits else 'train')}"
        )
    if not (path / "dataset_info.json").is_file():
        raise DataError(f"{path}: a folder, but not one written by Dataset.save_to_disk; use {FORMATS}")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot read the saved dataset: {_one_line(exc)}") from None


def _quiet_datasets() -> Any:
    import datasets  # deferred: slow to import, and only parties with their own files need it

    datasets.disable_progress_bars()
    # Its loaders log each failure before raising it; the DataError says it once.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    return datasets


def _one_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    # DatasetGenerationError only says that generating failed; the reason is its cause.
    if type(exc).__name__ == "DatasetGenerationError" and cause is not None:
        exc = cause
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of ``path`` with their 1-based numbers, split at ``\n`` alone (binary lines; ``str.splitlines``
    would also split at U+0085, U+2028 and U+2029, which JSON and CSV allow inside strings); a leading
    byte-order mark dropped; ``DataError`` naming the line of the first byte that is not UTF-8."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if n == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{n}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
                ) from None


def check_json_lines(path: Path) -> None:
    """``DataError`` naming the first line that is not UTF-8 or not one JSON object (blank lines are fine)."""
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)  # a \r before the \n is whitespace to JSON
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: each line must be a JSON object")


def check_csv(path: Path) -> list[str]:
    """The header of a CSV file; ``DataError`` naming the first line that is not UTF-8, not valid CSV, or
    whose row has another field count than the header."""
    reader = csv.reader(line for _, line in _lines(path))
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: the file is empty; its first line must name the columns")
        if len(set(header)) != len(header):
            raise DataError(f"{path}:1: a column name appears twice in the header")
        for row in reader:
            if row and len(row) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: the row's field count differs from the header's {len(header)}"
                )
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
    return header
