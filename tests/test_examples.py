"""Every shipped example config passes `mpctf validate` (the same check `mpctf launch` starts with)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpctf.cli import app

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "pretrain-austen.yaml",
        "prompt-tuning.yaml",
        "instruct-chatterbot.yaml",
        "full-finetune.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid" in result.output.replace("\n", "")
