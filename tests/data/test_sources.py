"""Built-in datasets and row filters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mpctf.config import DatasetConfig
from mpctf.data import sources
from mpctf.data.sources import AUSTEN_NOVELS, austen_folder, load_rows
from mpctf.errors import DataError


def test_chatterbot_has_one_row_per_conversation_with_its_topic_and_language() -> None:
    rows = load_rows(DatasetConfig(builtin="chatterbot"), seed=0)
    assert set(rows[0]) == {"question", "answer", "topic", "language"}
    english = [r for r in rows if r["language"] == "english"]
    trivia = [r for r in english if r["topic"] == "trivia"]
    assert len(english) == 2025 and len(trivia) == 260
    nixon = next(r for r in trivia if r["question"] == "Who was the 37th President of the United States?")
    assert nixon["answer"] == "Richard Nixon"
    assert len({r["language"] for r in rows}) == 28


def test_where_keeps_matching_rows_only() -> None:
    ds = DatasetConfig(builtin="chatterbot", where={"language": ["english"], "topic": ["trivia", "food"]})
    rows = load_rows(ds, seed=0)
    assert {r["topic"] for r in rows} == {"trivia", "food"} and {r["language"] for r in rows} == {"english"}
    assert len(rows) == 260 + 17


def test_where_on_an_unknown_field_or_with_no_match_is_a_data_error() -> None:
    with pytest.raises(DataError, match="`where` names field 'lang'; rows have question, answer, topic"):
        load_rows(DatasetConfig(builtin="chatterbot", where={"lang": ["english"]}), seed=0)
    with pytest.raises(DataError, match="no row matches `where`"):
        load_rows(DatasetConfig(builtin="chatterbot", where={"language": ["klingon"]}), seed=0)


def test_where_applies_before_max_samples(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(f'{{"text": "t{i}", "group": "{i % 2}"}}\n' for i in range(10)))
    rows = load_rows(DatasetConfig(path=path, where={"group": ["1"]}, max_samples=3), seed=0)
    assert len(rows) == 3 and all(r["group"] == "1" for r in rows)


def test_missing_austen_data_says_how_to_fetch_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCTF_CACHE", str(tmp_path))
    with pytest.raises(DataError) as info:
        sources._austen.__wrapped__()  # bypass the per-process cache
    message = str(info.value)
    assert "\n" not in message
    assert (
        f"apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb {tmp_path}" in message
    )


@pytest.mark.skipif(
    importlib.util.find_spec("rdata") is None or not (austen_folder() / "usr").is_dir(),
    reason="needs the rdata package and r-cran-janeaustenr unpacked into the cache (scripts/setup.sh)",
)
def test_austen_novels_are_read_as_paragraphs() -> None:
    rows = load_rows(DatasetConfig(builtin="austen"), seed=0)
    books = [r["book"] for r in rows]
    assert sorted(set(books)) == sorted(AUSTEN_NOVELS.values())
    assert rows[0] == {"text": "SENSE AND SENSIBILITY", "book": "Sense & Sensibility"}
    pride = [r["text"] for r in rows if r["book"] == "Pride & Prejudice"]
    assert any(t.startswith("It is a truth universally acknowledged, that a single man") for t in pride)
    assert all(r["text"] and "\n" not in r["text"] for r in rows)
