"""Memory-aware planning end to end: parties describe themselves, the server plans micro-batches."""

from __future__ import annotations

from pathlib import Path

from mpctf.config import load_config
from mpctf.party.planning import local_plans
from support import tiny_config_dict


def test_memory_strategy_shrinks_micro_batch_for_a_small_party(tmp_path: Path) -> None:
    cfg = tiny_config_dict(
        tmp_path,
        **{
            "data.partition": {"name": "memory", "steps_per_round": 2, "safety_factor": 1.0},
            "training.batch_size": 8,
        },
    )
    plans = local_plans(load_config(cfg))
    roomy = plans["alice"]
    assert roomy.micro_batch == 8 and roomy.grad_accum == 1
    # Cap bob below what a full micro-batch of 8 needs: the planner must pick a smaller one that fits,
    # and gradient accumulation keeps the batch at 8.
    assert roomy.est_peak_bytes is not None
    cap = roomy.est_peak_bytes / 2.5
    cfg["parties"][1]["memory_gb"] = cap / 2**30
    small = local_plans(load_config(cfg))["bob"]
    assert small.available_bytes == int(cap)
    assert small.micro_batch < 8 and small.est_peak_bytes <= small.available_bytes
    assert small.micro_batch * small.grad_accum == 8


def test_plan_reports_estimate_and_free_memory(tmp_path: Path) -> None:
    plans = local_plans(load_config(tiny_config_dict(tmp_path)))
    for plan in plans.values():
        assert plan.est_peak_bytes and plan.available_bytes and plan.est_peak_bytes < plan.available_bytes
