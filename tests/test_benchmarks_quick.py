"""The result benchmarks run end to end in --quick mode (tiny model): tables, CSV and plots come out."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpctf.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def benchmark(script: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def run_benchmark(script: str, out: Path, *args: str) -> str:
    proc = benchmark(script, out, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (out / "results.md").read_text()


@pytest.mark.slow
def test_collaboration_quick(tmp_path: Path) -> None:
    args = ["--settings", "movie:2", "--seeds", "1", "--party-samples", "20"]
    text = run_benchmark("collaboration.py", tmp_path, *args)
    methods = [
        "zero-shot",
        "majority label (no model)",
        "local-only (mean of parties)",
        "local-only (worst party)",
        "federated FedAvg",
        "centralized (pooled data)",
    ]
    for method in methods:
        assert f"| {method} |" in text
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {r["setting"] for r in rows} == {"movie:2"}
    fedavg = next(r for r in rows if r["method"] == "federated FedAvg")
    accuracies = [float(a) for a in fedavg["accuracy_per_seed"].split(";")]
    assert len(accuracies) == 1 and all(0.0 <= a <= 1.0 for a in accuracies)
    assert all(float(v) > 0 for v in fedavg["eval_loss_per_seed"].split(";"))
    assert all(int(b) > 0 for b in fedavg["bytes_moved"].split(";"))
    assert (tmp_path / "accuracy_movie_2.png").stat().st_size > 0
    # --party-samples: every method trains on the same small silos
    runs = tmp_path / "runs"
    silos = [(runs / f"data-movie-2p-s0-n20-party{i}.jsonl").read_text().splitlines() for i in (0, 1)]
    assert [len(rows) for rows in silos] == [20, 20]
    pooled = (runs / "data-movie-2p-s0-n20-pooled.jsonl").read_text().splitlines()
    assert pooled == silos[0] + silos[1]  # centralized trains on exactly the parties' rows
    federated = (runs / "fedavg-movie-2p-s0-n20" / "config.yaml").read_text()
    assert all(f"data-movie-2p-s0-n20-party{i}.jsonl" in federated for i in (0, 1))
    check_merge(tmp_path, rows)


def check_merge(first: Path, rows: list[dict[str, str]]) -> None:
    """--merge joins two invocations' tables (here the same run, relabelled as seed 1) and refuses bad joins."""
    second = first.parent / "seed1"
    second.mkdir()
    for name in ("results.csv", "curves.json"):
        (second / name).write_bytes((first / name).read_bytes())
    (second / "results.md").write_text((first / "results.md").read_text().replace("seeds 0", "seeds 1"))
    merged = first.parent / "merged"
    text = run_benchmark("collaboration.py", merged, "--merge", str(first), str(second))
    assert "### movie split, 2 parties, seeds 0, 1" in text
    joined = {r["method"]: r for r in csv.DictReader((merged / "results.csv").open())}
    for r in rows:
        for key in ("accuracy_per_seed", "seconds_per_run", "peak_mem_bytes"):
            assert joined[r["method"]][key] == ";".join(v for v in (r[key], r[key]) if v)
    assert (merged / "accuracy_movie_2.png").stat().st_size > 0
    refused = benchmark("collaboration.py", first.parent / "no", "--merge", str(first), str(first))
    assert refused.returncode != 0 and "repeats seed(s) [0] of setting movie:2" in refused.stderr
    (second / "results.md").write_text((second / "results.md").read_text().replace("rounds=2", "rounds=3"))
    refused = benchmark("collaboration.py", first.parent / "no", "--merge", str(first), str(second))
    assert refused.returncode != 0 and "differs from" in refused.stderr and "Budget" in refused.stderr


@pytest.mark.slow
def test_communication_quick(tmp_path: Path) -> None:
    run_benchmark(
        "communication.py", tmp_path, "--parties", "2", "--chains", "none,int8,topk 1% + int8 + zstd"
    )
    rows = {r["chain"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    ratio = {k: float(r["ratio_vs_fp32"]) for k, r in rows.items()}
    # The chains really shrink what is sent, in the expected order (the tiny model's updates are so small that
    # the container's tensor names weigh as much as the values, so the ratios are far below SmolLM2's).
    assert ratio["none"] < 1.01 < ratio["int8"] < ratio["topk 1% + int8 + zstd"]


@pytest.mark.slow
def test_strategies_quick(tmp_path: Path) -> None:
    text = run_benchmark(
        "strategies.py", tmp_path, "--strategies", "fedavg", "--parties", "3",
        "--attack-parties", "7", "--attacks", "sign_flip", "--robust", "fedavg,krum",
    )  # fmt: skip
    assert "| fedavg, no attack |" in text and "| krum, sign_flip |" in text
    assert (tmp_path / "accuracy_attack.png").stat().st_size > 0


@pytest.mark.slow
def test_evaluation_speed_benchmark_checks_both_ways_agree() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    script = str(ROOT / "benchmarks" / "evaluation.py")
    args = ["--model", "tiny-llama", "--samples", "16", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out reviews: 16" in proc.stdout and "accuracy" in proc.stdout
    assert "answer positions only" in proc.stdout


@pytest.mark.slow
def test_gpu_budget_builds_valid_configs_and_runs_in_a_spawned_child(tmp_path: Path) -> None:
    """What a CUDA machine takes that this one does not: the --gpu budget and spawned (not forked) runs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _harness
        import collaboration
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    args = collaboration.parse_args(["--gpu"])
    assert args.party_samples is None and args.batch_size is None  # the CPU table's defaults stay off
    budget = _harness.pick_budget(args)
    assert budget == _harness.Budget.gpu()
    for split in ("movie", "label_skew", "iid"):
        cfg = load_config(
            _harness.base_config(budget, name="g", seed=0, num_parties=8, split=split, out=tmp_path)
        )
        assert cfg.data.eval.max_samples == 1000 and cfg.data.eval.batch_size == 64
    quick = _harness.base_config(
        _harness.Budget.quick(), name="spawned", seed=0, num_parties=2, split="movie", out=tmp_path
    )
    outcome = _harness.run_isolated(quick, tmp_path / "spawned", start_method="spawn")
    assert len(outcome.accuracy_per_round) == 3 and all(a is not None for a in outcome.accuracy_per_round)
    assert outcome.bytes_moved > 0 and outcome.peak_mem_bytes > 0


@pytest.mark.slow
def test_robustness_quick(tmp_path: Path) -> None:
    args = ["--tasks", "sms", "--variants", "keep", "--methods", "fed", "--shares", "0.1", "0.7"]
    text = run_benchmark("robustness.py", tmp_path, *args)
    assert "| sms, fed keep |" in text
    # The silos hold the asked label shares of spam (10 and 70 % of 40 rows).
    silos = tmp_path / "data/sms-s0"
    for i, share in enumerate((0.1, 0.7)):
        labels = [json.loads(line)["label"] for line in (silos / f"party{i}.jsonl").read_text().splitlines()]
        assert (len(labels), labels.count("spam")) == (40, round(40 * share))
    # The probe saw every party's update in every round.
    probe = [json.loads(x) for x in (tmp_path / "sms/fed/keep/s0/probe.jsonl").read_text().splitlines()]
    assert [len(p["norms"]) for p in probe] == [2, 2] and all(len(p["cos_pairs"]) == 1 for p in probe)


@pytest.mark.slow
def test_privacy_audit_quick(tmp_path: Path) -> None:
    text = run_benchmark("privacy_audit.py", tmp_path)
    for run in ("plain", "secagg", "dp8", "sgd8"):
        assert f"| {run} |" in text
    results = json.loads((tmp_path / "results.json").read_text())["runs"]
    for run in ("plain", "dp8", "sgd8"):
        attacks = results[run]["membership"]
        assert all(0 <= attacks[f"{a}_auc"] <= 1 for a in ("loss", "lira", "loss_party", "lira_party"))
    # The ledgers and their audits: client DP's canary updates, DP-SGD's canary rows.
    assert results["dp8"]["dp_epsilon"] == pytest.approx(8, rel=0.01)
    assert results["dp8"]["audit_epsilon_lower_bound"] <= results["dp8"]["dp_epsilon"]
    assert 0 <= results["sgd8"]["audit_rows_epsilon_lower_bound"] <= results["sgd8"]["dp_sgd_epsilon"]
    # The server saw four updates in the clear, one sum under secure aggregation.
    assert (
        results["plain"]["labels"]["updates_seen"] == 4 and results["secagg"]["labels"]["updates_seen"] == 1
    )
    assert (tmp_path / "audit.png").stat().st_size > 0
