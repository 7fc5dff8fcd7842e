"""The server's held-out rows: `data.eval.where` scores only matching held-out rows, which no party trains on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpctf.config import load_config
from mpctf.data.federated import FederatedData
from mpctf.errors import DataError
from support import tiny_config_dict


def _config(tmp_path: Path, where: dict[str, list[str]]) -> FederatedData:
    rows = [{"question": f"q{i}", "answer": f"a{i}", "topic": ["trivia", "chat"][i % 2]} for i in range(100)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config_dict(
        tmp_path,
        **{
            "data.dataset": {"path": str(tmp_path / "qa.jsonl")},
            "data.eval": {"test_fraction": 0.2, "where": where, "max_samples": None},
            "task": {"type": "instruction", "prompt": "{question}"},
        },
    )
    return FederatedData(load_config(cfg))


def test_eval_where_keeps_only_matching_held_out_rows(tmp_path: Path) -> None:
    data = _config(tmp_path, {"topic": ["trivia"]})
    held_out = data.eval_rows()
    assert held_out and all(r["topic"] == "trivia" for r in held_out)
    trained = {r["question"] for party in ("alice", "bob") for r in data.party_rows(party)}
    # 20 of 100 rows are held out; the trivia among them are scored and no party trains on any of the 20.
    assert len(trained) == 80 and not trained & {r["question"] for r in held_out}


def test_eval_where_names_an_unknown_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.eval: `where` names field 'subject'"):
        _config(tmp_path, {"subject": ["trivia"]}).eval_rows()
