"""``mpctf tune``: a real search on the tiny model, scored by federated validation, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mpctf.cli import app
from mpctf.config import load_config
from mpctf.errors import ConfigError
from mpctf.report.metrics import read_metrics
from mpctf.tune.runner import check_tunable, run_search, trial_configs
from support import tiny_config_dict

runner = CliRunner()
SPACE = {"training.lr": [0.0005, 0.005], "training.local_steps": [1, 3]}
#: The real search: two trials, one survives into the second rung.
SEARCHED = {"training.lr": [0.0005, 0.005]}


def tunable(tmp_path: Path, **overrides) -> dict:
    return tiny_config_dict(
        tmp_path,
        **{
            "federation.rounds": 2,
            "data.validation": {"fraction": 0.2, "patience": 1},
            "tune": {"space": SPACE, "trials": 4, "eta": 2},
            **overrides,
        },
    )


def test_a_search_halves_the_trials_continues_the_survivors_and_writes_the_winner(tmp_path: Path) -> None:
    cfg = load_config(tunable(tmp_path, tune={"space": SEARCHED, "eta": 2}))
    result = run_search(cfg, tmp_path / "tune")
    # Rung 1: 2 trials × 1 round; rung 2: the better one continues to round 2 from its own checkpoint.
    assert result.rounds_run == 2 * 1 + 1 * 1 and result.compute_ratio == 1.5
    (survivor,) = [t for t in result.trials if len(t.scores) == 2]
    first = sorted(result.trials, key=lambda t: (-t.scores[0][1], t.number))
    assert survivor is first[0] is result.best
    log = read_metrics(tmp_path / "tune" / survivor.name / "metrics.jsonl")
    assert [r["resumed_from"] for r in log if r["event"] == "run_start"] == [None, 1]
    best = load_config(yaml.safe_load(result.best_config.read_text()))
    assert best.tune is None and best.federation.rounds == 2
    assert {"training.lr": best.training.lr} == result.best.overrides
    table = result.table.read_text()
    assert "trial-01" in table and "trial-02" in table and "val_accuracy @ 2 rounds" in table
    assert json.loads((tmp_path / "tune/search.json").read_text())["best"] == result.best.name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tune": None}, "has no `tune:` section"),
        ({"data.validation": None}, "scores trials by federated validation"),
    ],
)
def test_a_config_that_cannot_be_tuned_is_refused(tmp_path: Path, change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_tunable(load_config(tunable(tmp_path, **change)))


def test_tuning_with_privacy_is_refused_with_the_reason(tmp_path: Path) -> None:
    cfg = tunable(tmp_path, **{"data.validation": None})
    cfg["privacy"] = {"client_dp": {"noise_multiplier": 1.0, "clip_norm": 1.0}}
    with pytest.raises(
        ConfigError, match=r"spends privacy that privacy\.client_dp's ledger does not account for"
    ):
        check_tunable(load_config(cfg))


def test_a_trial_value_the_config_rejects_names_the_trial(tmp_path: Path) -> None:
    cfg = load_config(tunable(tmp_path, **{"tune": {"space": {"training.lr": [0.001, -1.0]}}}))
    with pytest.raises(ConfigError, match=r"^tune.space: trial 2 \(training.lr=-1.0\): .*lr"):
        trial_configs(cfg)


def test_the_cli_says_in_one_line_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tunable(tmp_path, tune=None)))
    result = runner.invoke(app, ["tune", str(path)])
    assert result.exit_code == 2
    assert "has no `tune:` section" in result.output and "Traceback" not in result.output
