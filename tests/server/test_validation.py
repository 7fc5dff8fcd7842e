"""Federated validation: parties score the global model on held-out slices of their own rows, the server
averages the metrics by rows, picks the best round on them, stops early with patience, and export takes it."""

from __future__ import annotations

from pathlib import Path

import pytest

import mpctf
from mpctf.config import ValidationConfig, load_config
from mpctf.data.federated import FederatedData
from mpctf.errors import ConfigError
from mpctf.export import export_model
from mpctf.report.metrics import read_metrics
from mpctf.report.render import render_report
from mpctf.server.validation import FederatedValidation, combine
from support import tiny_config_dict


def test_combine_weights_each_party_by_its_validation_rows() -> None:
    reports = [
        {"num_samples": 10, "metrics": {"accuracy": 0.5, "eval_loss": 1.0, "only_here": 1.0}},
        {"num_samples": 30, "metrics": {"accuracy": 0.9, "eval_loss": 2.0}},
    ]
    assert combine(reports) == {
        "val_accuracy": pytest.approx((10 * 0.5 + 30 * 0.9) / 40),
        "val_eval_loss": pytest.approx((10 * 1.0 + 30 * 2.0) / 40),
        "val_samples": 40.0,
        "val_parties": 2.0,
    }
    assert combine([]) == {}


@pytest.mark.parametrize(
    ("higher", "scores", "best", "since"),
    [
        (True, [0.6, 0.7, 0.65, 0.7], 2, 2),  # an equal score is not better
        (False, [2.0, 1.5, 1.7, 1.2], 4, 0),
    ],
)
def test_the_best_round_and_the_patience_count(higher, scores, best, since) -> None:
    tracker = FederatedValidation(ValidationConfig(patience=2), "m", higher)
    for round_num, score in enumerate(scores, start=1):
        tracker.observe(round_num, {"val_m": score})
    assert (tracker.best_round, tracker.since_best) == (best, since)
    assert tracker.exhausted == (since >= 2)


def test_min_delta_is_the_improvement_that_counts() -> None:
    tracker = FederatedValidation(ValidationConfig(min_delta=0.05), "m", True)
    for round_num, score in enumerate([0.60, 0.64, 0.66], start=1):
        tracker.observe(round_num, {"val_m": score})
    assert tracker.best_round == 3 and tracker.best_score == 0.66


def test_a_party_never_trains_on_its_validation_rows(tmp_path: Path) -> None:
    cfg = load_config(tiny_config_dict(tmp_path, **{"data.validation": {"fraction": 0.25}}))
    plain = load_config(tiny_config_dict(tmp_path))
    data, whole = FederatedData(cfg), FederatedData(plain)
    for party in ("alice", "bob"):
        train, val = data.party_split(party)
        everything = whole.party_rows(party)
        assert len(val) == round(0.25 * len(everything)) and len(train) + len(val) == len(everything)
        key = [(r["text"], r["movie_name"]) for r in train]
        assert not set(key) & {(r["text"], r["movie_name"]) for r in val}


def test_validation_with_a_privacy_mechanism_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config_dict(tmp_path, **{"data.validation": {}})
    cfg["privacy"] = {"secure_aggregation": {}}
    with pytest.raises(
        ConfigError,
        match=r"data.validation sends each party.s validation metrics .*privacy\.secure_aggregation",
    ):
        load_config(cfg)


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("validated")
    cfg = tiny_config_dict(tmp, **{"federation.rounds": 3, "data.validation": {"fraction": 0.2}})
    run_dir = tmp / "run"
    mpctf.run(cfg, run_dir=run_dir)
    return run_dir


def test_every_scored_round_records_the_row_weighted_validation(validated_run: Path) -> None:
    records = read_metrics(validated_run / "metrics.jsonl")
    reports = [r for r in records if r["event"] == "party_validation"]
    assert sorted((r["round"], r["party"]) for r in reports) == [
        (n, p) for n in (1, 2, 3) for p in ("alice", "bob")
    ]
    for round_record in (r for r in records if r["event"] == "round" and r["round"] > 0):
        mine = [r for r in reports if r["round"] == round_record["round"]]
        expected = combine(mine)
        assert round_record["val_accuracy"] == pytest.approx(expected["val_accuracy"])
        assert round_record["val_samples"] == sum(r["num_samples"] for r in mine)
    # Only metrics came back: each party's report holds a row count and scores, nothing else.
    assert all(
        set(r) == {"event", "time", "round", "party", "status", "num_samples", "metrics"} for r in reports
    )


def test_the_best_round_is_chosen_on_validation_and_exported_by_default(
    validated_run: Path, tmp_path: Path
) -> None:
    records = read_metrics(validated_run / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round" and r["round"] > 0]
    best = max(rounds, key=lambda r: (r["val_accuracy"], -r["round"]))["round"]
    end = next(r for r in records if r["event"] == "run_end")
    assert end["best_round"] == best
    report = render_report(validated_run).read_text()
    assert (
        f"Best round by federated validation (the parties' held-out rows, never the test set): **{best}**"
        in report
    )
    assert "val accuracy" in report
    exported = export_model(validated_run, tmp_path / "model")
    assert (exported.round, exported.chosen) == (best, "best by federated validation")


def test_patience_stops_the_run_and_says_why(tmp_path: Path) -> None:
    cfg = tiny_config_dict(
        tmp_path,
        **{"federation.rounds": 5, "data.validation": {"fraction": 0.2, "patience": 1, "min_delta": 1.0}},
    )
    result = mpctf.run(cfg, run_dir=tmp_path / "run")
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    stop = next(r for r in records if r["event"] == "early_stop")
    assert stop["round"] == 2 and "data.validation.patience" in stop["reason"]
    end = next(r for r in records if r["event"] == "run_end")
    assert end["best_round"] == 1 and "stop_reason" in end


def test_a_resumed_run_continues_the_best_round_and_the_patience_count() -> None:
    records = [
        {"event": "round", "round": 0, "accuracy": 0.5},
        {"event": "round", "round": 1, "val_m": 0.7},
        {"event": "round", "round": 2, "val_m": 0.6},
        {"event": "round", "round": 3, "val_m": 0.9},  # after the checkpoint the run resumes from
    ]
    tracker = FederatedValidation(ValidationConfig(patience=3), "m", True)
    tracker.restore(records, up_to=2)
    assert (tracker.best_round, tracker.since_best) == (1, 1)


def test_a_report_on_a_best_round_without_its_score_skips_the_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        '{"event": "round", "round": 1, "accuracy": 0.5}\n{"event": "run_end", "best_round": 1}\n'
    )
    assert "Best round" not in render_report(tmp_path, strict=True).read_text()
