"""Privacy in real federated runs on the local backend with the tiny model: DP-FedAvg's ledger and budget stop,
secure aggregation and CKKS giving FedAvg's result (with a dropout for SecAgg), DP-SGD's per-party ε, and
combinations that fail at validation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from mpctf.config import load_config
from mpctf.errors import ConfigError
from mpctf.messages import RoundTask
from mpctf.model.bundle import ModelBundle
from mpctf.party.worker import PartyWorker
from mpctf.privacy.accountant import epsilon_for
from mpctf.report.metrics import read_metrics
from mpctf.report.render import render_report
from mpctf.runtime.local import LocalBackend
from mpctf.server.checkpoint import load_latest
from mpctf.server.loop import RoundLoop, RunResult
from support import tiny_config_dict

DP = {"noise_multiplier": 1.0, "clip_norm": 0.05}


def three_parties(tmp_path: Path, rounds: int = 1, **privacy: Any) -> dict[str, Any]:
    return tiny_config_dict(
        tmp_path,
        **{
            "parties": [{"name": "alice"}, {"name": "bob"}, {"name": "carol"}],
            "federation.rounds": rounds,
            "privacy": privacy,
        },
    )


def run(cfg: dict[str, Any], run_dir: Path, *, fail_training: str | None = None) -> RunResult:
    """A local run; ``fail_training`` names a party whose training fails every round (after its key exchange)."""
    config = load_config(cfg)
    bundle = ModelBundle.load(config)
    handlers = {p: PartyWorker(config, p, bundle=bundle).handle for p in config.party_names}
    if fail_training is not None:
        inner = handlers[fail_training]

        def failing(payload: bytes) -> bytes:
            if RoundTask.from_bytes(payload).instructions.get("op") == "train":
                raise RuntimeError("party went offline")
            return inner(payload)

        handlers[fail_training] = failing
    result = RoundLoop(config, LocalBackend(handlers), run_dir, bundle=bundle).run()
    render_report(run_dir)
    return result


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_latest(run_dir)
    assert ckpt is not None
    return ckpt.global_state


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """FedAvg without privacy: all three parties, and with carol failing."""
    tmp = tmp_path_factory.mktemp("plain")
    run(three_parties(tmp), tmp / "all")
    run(three_parties(tmp), tmp / "dropout", fail_training="carol")
    return {"all": final_state(tmp / "all"), "dropout": final_state(tmp / "dropout")}


@pytest.mark.slow
def test_client_dp_records_increasing_epsilon_and_stops_within_budget(tmp_path: Path) -> None:
    eps = [epsilon_for(noise_multiplier=1.0, sampling_rate=1.0, steps=s, delta=1e-5) for s in (1, 2, 3)]
    budget = (eps[1] + eps[2]) / 2  # two rounds fit, the third would exceed it
    cfg = tiny_config_dict(
        tmp_path,
        **{
            "federation.rounds": 4,
            "privacy": {"client_dp": {**DP, "epsilon_max": budget}},
            "data.eval.every_rounds": 4,
        },
    )
    result = run(cfg, tmp_path / "run")
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    # Round 2 is the last the budget allows, so the final model is scored although the schedule skips it.
    assert [r["round"] for r in result.rounds if "accuracy" in r] == [0, 2]
    recorded = [r["dp_epsilon"] for r in result.rounds[1:]]
    assert all(math.isfinite(e) for e in recorded) and recorded[0] < recorded[1] <= budget
    assert recorded == pytest.approx(eps[:2], rel=1e-6)
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    stop = next(r for r in records if r["event"] == "privacy_stop")
    assert stop["round"] == 3 and "epsilon_max" in stop["reason"]
    assert next(r for r in records if r["event"] == "run_end")["stop_reason"] == stop["reason"]
    ckpt = load_latest(tmp_path / "run")
    assert (
        ckpt is not None
        and ckpt.round == 2
        and ckpt.privacy_state["stages"]["client_dp"]["accountant"]["steps"] == 2
    )
    # every party's update reached the server clipped to the clip norm
    norms = [r["update_norm"] for r in records if r["event"] == "party_round"]
    assert norms and all(n <= DP["clip_norm"] * (1 + 1e-5) for n in norms)
    report = (tmp_path / "run/report.md").read_text()
    assert "## Privacy" in report and "Training stopped before round 3" in report


@pytest.mark.slow
def test_secure_aggregation_gives_fedavg_up_to_fixed_point_error(tmp_path: Path, plain) -> None:
    result = run(three_parties(tmp_path, secure_aggregation={}), tmp_path / "run")
    assert_close_states(final_state(tmp_path / "run"), plain["all"], atol=1e-5)
    round_1 = result.rounds[1]
    assert round_1["privacy_exchange_bytes_up"] > 0 and round_1["privacy_exchange_seconds"] >= 0
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    ups = [r for r in records if r["event"] == "party_round"]
    # the server received int32 ring vectors, as many bytes as float32 plus the header
    assert all(r["status"] == "ok" and r["update_norm"] is None for r in ups)
    assert "secure aggregation" in (tmp_path / "run/report.md").read_text()


@pytest.mark.slow
def test_secure_aggregation_recovers_the_sum_when_a_party_drops_after_sharing_keys(
    tmp_path: Path, plain
) -> None:
    result = run(three_parties(tmp_path, secure_aggregation={}), tmp_path / "run", fail_training="carol")
    assert result.rounds[1]["privacy_dropped"] == ["carol"]
    assert_close_states(final_state(tmp_path / "run"), plain["dropout"], atol=1e-5)


@pytest.mark.slow
def test_homomorphic_encryption_gives_fedavg_within_ckks_error(tmp_path: Path, plain) -> None:
    result = run(three_parties(tmp_path, homomorphic_encryption={}), tmp_path / "run")
    assert_close_states(final_state(tmp_path / "run"), plain["all"], atol=1e-5)
    assert result.rounds[1]["he_decrypted_by"] == "alice"
    setup = next(r for r in read_metrics(tmp_path / "run/metrics.jsonl") if r["event"] == "privacy")
    assert setup["he_key_holder"] == "alice" and setup["he_parties"] == ["alice", "bob", "carol"]


@pytest.mark.slow
def test_distributed_dp_with_secure_aggregation_and_adaptive_clipping(tmp_path: Path) -> None:
    dp = {**DP, "mode": "distributed", "adaptive_clipping": {"count_noise_std": 1.0}}
    result = run(three_parties(tmp_path, 2, client_dp=dp, secure_aggregation={}), tmp_path / "run")
    rounds = result.rounds[1:]
    assert [r["dp_rounds"] for r in rounds] == [1, 2]
    assert rounds[0]["dp_clip_norm"] == DP["clip_norm"]
    assert rounds[1]["dp_clip_norm"] == rounds[0]["dp_next_clip_norm"] != DP["clip_norm"]
    assert rounds[0]["dp_epsilon"] < rounds[1]["dp_epsilon"]


@pytest.mark.slow
def test_dp_sgd_reports_growing_epsilon_per_party_and_its_canary_audit(tmp_path: Path) -> None:
    sample_dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    privacy = {"sample_dp": sample_dp, "audit": {"canary_rows": 24}}
    cfg = tiny_config_dict(tmp_path, **{"privacy": privacy, "data.eval.every_rounds": 2})
    run(cfg, tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if r["event"] == "party_round"]
    for party in ("alice", "bob"):
        eps = [r["dp_sgd_epsilon"] for r in records if r["party"] == party]
        assert len(eps) == 2 and all(math.isfinite(e) and e > 0 for e in eps) and eps[0] < eps[1]
        # Round 1 is not scored, so the party spends no forward passes on its canaries then.
        first, last = (r for r in records if r["party"] == party)
        assert "audit_rows_epsilon_lower_bound" not in first
        # Noise σ = 1 over a few steps: the canaries prove no more than the ledger allows.
        assert 0 <= last["audit_rows_epsilon_lower_bound"] <= last["dp_sgd_epsilon"]
        assert 0 < last["audit_rows_guesses"] <= 24 and last["audit_rows_seconds"] > 0
    report = (tmp_path / "run/report.md").read_text()
    assert "Sample-level DP-SGD" in report
    assert "Empirical check of DP-SGD (canary rows, one-run audit)" in report
    assert "VIOLATED" not in report


def _dp_sgd_update_norms(tmp_path: Path, strategy: dict[str, Any]) -> list[float]:
    # No noise and a loose clip, so the only difference between two runs is the strategy's party-side term.
    sample_dp = {"noise_multiplier": 0.0, "max_grad_norm": 100.0}
    cfg = tiny_config_dict(tmp_path, **{"privacy": {"sample_dp": sample_dp}, "federation.strategy": strategy})
    run(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    return [r["update_norm"] for r in records if r["event"] == "party_round"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "same_as"),
    [
        ({"name": "fedprox", "mu": 1000.0}, {"name": "fedprox", "mu": 0.0}),
        ({"name": "scaffold"}, {"name": "fedavg"}),
    ],
)
def test_a_strategys_party_side_term_survives_dp_sgd(tmp_path: Path, strategy, same_as) -> None:
    """Opacus replaces ``.grad`` with the noised per-example sum, so FedProx's proximal gradient and SCAFFOLD's
    correction must act after the noise; before, μ = 1000 and μ = 0 gave bit-identical adapters."""
    with_term = _dp_sgd_update_norms(tmp_path / "with", strategy)
    without = _dp_sgd_update_norms(tmp_path / "without", same_as)
    if strategy["name"] == "fedprox":
        # μ‖w − x‖² pulls every step back to the round's start: far shorter updates, in both rounds.
        assert all(a < 0.5 * b for a, b in zip(with_term, without, strict=True))
    else:
        # c = c_i = 0 in round 1; from round 2 each party's steps are corrected by c − c_i ≠ 0.
        assert with_term[:2] == pytest.approx(without[:2]) and with_term[2:] != pytest.approx(without[2:])


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"privacy": {"client_dp": DP, "secure_aggregation": {}}}, "set client_dp.mode to 'distributed'"),
        (
            {"privacy": {"secure_aggregation": {}}, "federation.strategy": {"name": "krum"}},
            "every individual",
        ),
        ({"privacy": {"client_dp": DP}, "federation.strategy": {"name": "scaffold"}}, "one mean update"),
        (
            {"privacy": {"homomorphic_encryption": {}}, "communication": {"uplink": [{"name": "int8"}]}},
            "uplink",
        ),
    ],
)
def test_a_bad_combination_is_one_config_error_line(tmp_path: Path, overrides, fragment) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tiny_config_dict(tmp_path, **overrides))
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("config key `privacy`")
