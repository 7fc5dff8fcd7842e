"""The command line: one-line errors with the right exit codes, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def _one_error(result, code: int) -> str:
    """The single `error:` line of a failed command (and nothing else on the output)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mpctf {version('mpctf')}"


def test_every_argument_and_option_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            assert (getattr(param, "help", None) or "").strip(), f"{name} {param.name}"
        shown = runner.invoke(app, [name, "--help"]).output
        for param in command.params:
            assert " ".join(param.help.split())[:20] in " ".join(shown.replace("│", " ").split()), (
                name,
                param,
            )


def test_usage_errors_are_one_line() -> None:
    line = _one_error(runner.invoke(app, ["validate"]), 2)
    assert "Missing argument 'CONFIG'" in line and "validate --help`" in line
    _one_error(
        runner.invoke(app, ["certs", "c", "--server-host", "h", "--party", "a", "--valid-days", "x"]), 2
    )
    _one_error(runner.invoke(app, ["nosuchcommand"]), 2)


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    assert _one_error(runner.invoke(app, ["validate", str(path)]), 2) == (
        f"error: {path}:1: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    )


def test_user_text_is_never_read_as_markup(tmp_path: Path) -> None:
    path = tmp_path / "[bold]c[/] :smile:.yaml"
    assert (
        _one_error(runner.invoke(app, ["validate", str(path)]), 2) == f"error: config file not found: {path}"
    )


def test_certs_refuses_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    args = ["certs", str(tmp_path / "c"), "--server-host", "127.0.0.1", "--party", "alice"]
    assert runner.invoke(app, args).exit_code == 0
    ca_key = (tmp_path / "c/ca.key").read_bytes()
    assert "already holds a CA (ca.key)" in _one_error(runner.invoke(app, args), 2)
    assert (tmp_path / "c/ca.key").read_bytes() == ca_key
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert (tmp_path / "c/ca.key").read_bytes() != ca_key


@pytest.mark.parametrize(
    ("extra", "out", "code", "message"),
    [
        (["--valid-days", "-5"], "c", 2, "valid days must be between 1 and 36500, got -5"),
        (["--party", "../evil"], "c", 2, "party name '../evil' is not file-name-safe"),
        ([], "file/c", 2, "is a file, not a folder"),
        ([], "file", 2, "is a file, not a folder"),
    ],
)
def test_certs_bad_arguments_are_one_line(tmp_path: Path, extra, out, code, message) -> None:
    (tmp_path / "file").write_text("x")
    args = ["certs", str(tmp_path / out), "--server-host", "127.0.0.1", "--party", "alice", *extra]
    assert message in _one_error(runner.invoke(app, args), code)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no folder can be made")
def test_certs_in_an_impossible_folder_is_a_storage_error() -> None:
    args = ["certs", "/proc/mpctf-certs", "--server-host", "127.0.0.1", "--party", "alice"]
    assert "cannot write credentials" in _one_error(runner.invoke(app, args), 8)


def test_report_of_metrics_that_are_not_json(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("<html>not metrics</html>\n")
    line = _one_error(runner.invoke(app, ["report", str(tmp_path)]), 3)
    assert line.startswith(f"error: {tmp_path / 'metrics.jsonl'}:1: not valid JSON")
    assert not (tmp_path / "report.md").exists()


def test_report_of_a_missing_dir_or_a_file(tmp_path: Path) -> None:
    assert "not found" in _one_error(runner.invoke(app, ["report", str(tmp_path / "nope")]), 2)
    (tmp_path / "f").write_text("x")
    assert "(a file)" in _one_error(runner.invoke(app, ["report", str(tmp_path / "f")]), 2)


def test_output_dir_or_run_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    cfg = _write(tmp_path, tiny_config_dict(tmp_path, output_dir=str(tmp_path / "f")))
    line = _one_error(runner.invoke(app, ["validate", str(cfg)]), 2)
    assert line == f"error: config key `output_dir`: {tmp_path / 'f'} is a file, not a folder"
    cfg = _write(tmp_path, tiny_config_dict(tmp_path))
    line = _one_error(runner.invoke(app, ["launch", str(cfg), "--run-dir", str(tmp_path / "f" / "run")]), 2)
    assert line == f"error: --run-dir: {tmp_path / 'f'} is a file, not a folder"


@pytest.mark.parametrize("command", ["launch", "server"])
def test_launch_and_server_resume_the_same_way(tmp_path: Path, command: str) -> None:
    """Both take `--resume RUN_DIR` (the config the run recorded) and refuse a folder that is not a run."""
    result = runner.invoke(app, [command, "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "is not a run directory (no config.yaml)" in result.output
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config_dict(tmp_path)))
    other = tmp_path / "other"
    result = runner.invoke(app, [command, "--resume", str(tmp_path), "--run-dir", str(other)])
    assert result.exit_code == 2 and "name different run directories" in result.output


def test_a_launch_that_fails_before_any_round_leaves_no_empty_run_directory(
    tmp_path: Path, monkeypatch
) -> None:
    from mpctf import api
    from mpctf.errors import FederationError

    def fail(cfg, *, run_dir, **kwargs):
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "config.yaml").write_text("name: x\n")
        raise FederationError("round 1: only 0 parties reachable")

    monkeypatch.setattr(api, "run", fail)
    result = runner.invoke(app, ["launch", str(_write(tmp_path, tiny_config_dict(tmp_path)))])
    assert result.exit_code == 5 and "no round completed, the run directory was removed" in result.output
    assert not any((tmp_path / "runs").glob("*"))


def test_an_interrupted_launch_names_its_run_directory_and_the_resume_command(
    tmp_path: Path, monkeypatch
) -> None:
    from mpctf import api

    def interrupted(cfg, *, run_dir, **kwargs):
        (Path(run_dir) / "checkpoints").mkdir(parents=True)
        (Path(run_dir) / "checkpoints" / "latest.json").write_text('{"round": 1, "path": "round-0001"}')
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "run", interrupted)
    run_dir = tmp_path / "the-run"
    result = runner.invoke(
        app, ["launch", str(_write(tmp_path, tiny_config_dict(tmp_path))), "--run-dir", str(run_dir)]
    )
    assert result.exit_code == 130
    assert f"continue with: mpctf launch --resume {run_dir}" in " ".join(result.output.split())
