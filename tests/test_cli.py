"""The command line: one-line errors with the right exit codes, never a traceback."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from mpctf.cli import app
from support import tiny_config_dict

runner = CliRunner()


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_validate_ok(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(_write(tmp_path, tiny_config_dict(tmp_path)))])
    assert result.exit_code == 0 and "valid (2 parties, 2 rounds" in result.output


def test_validate_bad_key_one_line_exit_2(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["federation"]["rounds"] = "many"
    result = runner.invoke(app, ["validate", str(_write(tmp_path, cfg))])
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "federation.rounds" in lines[0] and "Traceback" not in result.output


def test_missing_config_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "config file not found" in result.output


def test_launch_needs_config_or_resume() -> None:
    result = runner.invoke(app, ["launch"])
    assert result.exit_code == 2 and "give a CONFIG file, or --resume RUN_DIR" in result.output


def test_resume_of_a_non_run_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["launch", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "is not a run directory" in result.output


def test_report_of_a_non_run_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no metrics.jsonl" in result.output


def test_certs_writes_credentials(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["certs", str(tmp_path / "c"), "--server-host", "127.0.0.1", "--party", "alice", "--party", "bob"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c/ca.crt").is_file() and (tmp_path / "c/parties/bob.pub").is_file()
    assert (tmp_path / "c/parties/alice").stat().st_mode & 0o077 == 0


def test_plan_json_lists_every_party(tmp_path: Path) -> None:
    import json

    result = runner.invoke(app, ["plan", str(_write(tmp_path, tiny_config_dict(tmp_path))), "--json"])
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)
    assert sorted(plans) == ["alice", "bob"]
    assert {"chunk_samples", "micro_batch", "grad_accum", "rounds_per_epoch", "est_peak_bytes"} <= set(
        plans["bob"]
    )
