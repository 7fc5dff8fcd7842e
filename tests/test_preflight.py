"""`mpctf validate` runs what launch checks before it starts: model, data rows, host rules, all in one pass."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mpctf.cli import app
from support import tiny_config_dict

runner = CliRunner()


def _validate(tmp_path: Path, cfg: dict) -> tuple[int, list[str]]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["validate", str(path)])
    assert "Traceback" not in result.output
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def _party_file(tmp_path: Path, name: str, rows: list[dict]) -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_every_problem_launch_would_hit_is_reported_at_once(tmp_path: Path) -> None:
    """Rows with a label outside task.labels, rows without the prompt's field, an empty file and a host on the
    local backend: validate used to say 'valid' for each of these."""
    cfg = tiny_config_dict(tmp_path)
    good = {"text": "fine film", "category": "fresh"}
    cfg["parties"] = [
        {
            "name": "alice",
            "data": {"path": _party_file(tmp_path, "alice", [good, {**good, "category": "meh"}])},
        },
        {
            "name": "bob",
            "data": {"path": _party_file(tmp_path, "bob", [{"review": "x", "category": "fresh"}])},
        },
        {"name": "carol", "data": {"path": _party_file(tmp_path, "carol", [])}},
    ]
    code, lines = _validate(tmp_path, cfg)
    assert code == 2
    text = "\n".join(lines)
    assert "party 'alice' row 2: label 'meh' is not in task.labels (fresh, rotten)" in text
    assert "party 'bob' row 1: row lacks field(s) text" in text
    assert "carol" in text
    assert all(line.startswith("error") or not line.startswith(" ") for line in lines)


def test_a_host_on_the_local_backend_and_an_unknown_model_are_config_errors(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["parties"][1]["host"] = {"address": "gpu-1"}
    code, lines = _validate(tmp_path, cfg)
    assert code == 2 and any("parties[].host" in line and "backend.name: flower" in line for line in lines)
    for name in ("no-such-org/no-such-model", "models/not/a hub id", "../missing-folder"):
        cfg = tiny_config_dict(tmp_path)
        cfg["model"]["name"] = name
        code, lines = _validate(tmp_path, cfg)
        assert code == 2 and any("model.name" in line and "nothing is downloaded" in line for line in lines)


def test_a_missing_file_does_not_hide_a_privacy_conflict(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["parties"][0]["data"] = {"path": str(tmp_path / "missing.jsonl")}
    cfg["privacy"] = {"secure_aggregation": {}, "homomorphic_encryption": {}}
    code, lines = _validate(tmp_path, cfg)
    text = "\n".join(lines)
    assert code == 2 and "missing.jsonl" in text and "enable only one" in text


def test_a_schema_error_does_not_hide_a_missing_file(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["federation"]["rounds"] = "many"
    cfg["parties"][0]["data"] = {"path": "nowhere.jsonl"}
    code, lines = _validate(tmp_path, cfg)
    text = "\n".join(lines)
    assert (
        code == 2
        and "federation.rounds" in text
        and "parties.0.data.path" in text
        and "nowhere.jsonl" in text
    )


def test_the_missing_file_check_of_a_broken_config_survives_any_shape(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["rounds_typo"] = 1
    cfg["parties"] = [["not", "a", "mapping"], {"name": "bob", "data": ["x"]}]
    code, lines = _validate(tmp_path, cfg)
    assert code == 2 and lines
