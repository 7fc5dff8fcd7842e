"""A party trained by two processes (gloo on CPU) against the same party trained by one process."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import torch

import mpctf
from mpctf.comm import chain_from_specs
from mpctf.config import load_config
from mpctf.messages import RoundTask, Update
from mpctf.model.bundle import ModelBundle
from mpctf.party.planning import local_plans
from mpctf.party.worker import PartyWorker
from mpctf.report.metrics import read_metrics
from support import tiny_config_dict

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, processes: int, **overrides: object) -> dict:
    return tiny_config_dict(
        tmp_path,
        **{
            "training.processes_per_party": processes,
            "training.threads": 1,
            "training.local_steps": None,
            "data.partition.size": 9,
            **overrides,
        },
    )


def _train_once(
    tmp_path: Path, processes: int, micro_batch: int, mode: str, mu: float | None, sharding: str | None = None
) -> tuple[Update, list[int]]:
    """One round of party alice on a chunk of 9 examples in steps of 4: the last step has one example, so with
    two processes rank 0 runs a zero-weight stand-in. With ``mu``, FedProx's proximal term joins the loss."""
    overrides: dict[str, object] = {"training.mode": mode}
    if sharding is not None:  # FSDP needs a party to own its process, as on the processes backend
        overrides |= {"training.sharding": sharding, "backend.name": "processes"}
    cfg = _config(tmp_path, processes, **overrides)
    if mode != "lora":
        del cfg["training"]["lora"]
    if mu is not None:
        cfg["federation"]["strategy"] = {"name": "fedprox", "mu": mu}
    config = load_config(cfg)
    plan = local_plans(config)["alice"]
    # Rounds of 9 samples (the first chunk has num_samples // rounds_per_epoch rows).
    plan = dataclasses.replace(
        plan, rounds_per_epoch=plan.num_samples // 9, micro_batch=micro_batch, grad_accum=4 // micro_batch
    )
    bundle = ModelBundle.load(config)
    # Read before the worker starts: under FSDP its model then holds only rank 0's slices.
    state = bundle.mode.get_state(bundle.model)
    worker = PartyWorker(config, "alice", bundle=bundle)
    try:
        encoded, header = chain_from_specs([]).encode(state, {})
        strategy = {} if mu is None else {"mu": mu}
        task = RoundTask(
            1, encoded, {"plan": dataclasses.asdict(plan), "downlink": header, "strategy": strategy}
        )
        update = worker.train(task)
        pids = [p.pid for p in worker.ranks.procs] if worker.ranks else []
    finally:
        worker.close()
    return update, pids


@pytest.mark.parametrize(
    ("micro_batch", "mode", "mu", "sharding"),
    [
        (4, "lora", None, None),
        (2, "lora", None, None),
        (4, "prompt_tuning", 0.5, None),
        (4, "full", None, "fsdp"),
        (2, "full", 0.5, "fsdp"),
    ],
)
def test_two_processes_give_the_one_process_update(
    tmp_path: Path, micro_batch: int, mode: str, mu: float | None, sharding: str | None
) -> None:
    """Same chunk, same seed, same total batch of 4 per step: each rank takes 2 examples (as one micro-batch,
    or as two micro-batches of 1 when the plan accumulates) and DDP or FSDP averages the gradients. The
    verbalizers are one token each, so every example carries the same weight in both layouts and the updates
    agree up to float rounding (different padding widths and summation order): within 1e-4 of the update's
    largest entry. The FedProx cases also send the hooks to the other rank and add the proximal term on both;
    under FSDP each rank holds half of every tensor, so the state is scattered and gathered, and the proximal
    term is a sum over each rank's slices."""
    one, _ = _train_once(tmp_path / "one", 1, micro_batch, mode, mu)
    two, pids = _train_once(tmp_path / "two", 2, micro_batch, mode, mu, sharding)
    assert (one.num_samples, one.num_tokens) == (two.num_samples, two.num_tokens) == (9, one.num_tokens)
    assert two.metrics["loss"] == pytest.approx(one.metrics["loss"], rel=1e-5)
    assert one.tensors.keys() == two.tensors.keys()
    scale = max(float(t.abs().max()) for t in one.tensors.values())
    assert scale > 0
    if mode != "full":
        for key, tensor in one.tensors.items():
            torch.testing.assert_close(two.tensors[key], tensor, rtol=0, atol=1e-4 * scale, msg=key)
    else:
        # AdamW divides by each entry's gradient RMS, so where a gradient is near zero (embedding rows of tokens
        # barely seen) summation order alone moves an entry by up to an optimizer step (lr each): a one-process
        # control with two micro-batches differs from one process just as much (benchmarks/party_sharding.py).
        # So a handful of entries (at most 1 in 10,000) may differ by at most lr per step; all others agree.
        lr, steps = 5e-3, 3
        diffs = torch.cat([(two.tensors[k] - t).abs().flatten() for k, t in one.tensors.items()])
        assert int((diffs > 1e-4 * scale).sum()) <= 1e-4 * diffs.numel()
        assert float(diffs.max()) <= lr * steps
    # The other rank is gone once the worker is closed.
    assert pids and not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def test_local_run_with_two_processes_per_party_follows_the_one_process_run(tmp_path: Path) -> None:
    """Two rounds of a whole federation on the local backend: every party trains with two processes, each keeping
    its optimizer state between rounds, the held-out loss after each round is the one-process run's, and no extra
    rank is left once the run returns."""
    settings = {"federation.rounds": 2, "training.optimizer_state": "keep"}
    one = mpctf.run(_config(tmp_path / "one", 1, **settings), run_dir=tmp_path / "one/run")
    two = mpctf.run(_config(tmp_path / "two", 2, **settings), run_dir=tmp_path / "two/run")
    assert [r["round"] for r in two.rounds] == [0, 1, 2]
    assert two.rounds[-1]["eval_loss"] < two.rounds[0]["eval_loss"]
    for a, b in zip(one.rounds, two.rounds, strict=True):
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
        assert b["accuracy"] == a["accuracy"]
    assert not _helper_ranks(os.getpid())


def _helper_ranks(parent: int) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(parent).children(recursive=True)
        if "mpctf.party.rank_process" in " ".join(p.cmdline())
    ]


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_other_ranks_die_with_the_party_process(tmp_path: Path, how: str) -> None:
    """Killing rank 0 outright, or stopping its whole process group the way ``mpctf launch`` stops a party
    (SIGTERM to the group, no cleanup code runs), leaves no rank behind."""
    script = tmp_path / "party.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).parents[1])!r})
            from support import tiny_config_dict
            from mpctf.config import load_config
            from mpctf.party.worker import PartyWorker
            worker = PartyWorker(load_config(tiny_config_dict(__import__("pathlib").Path({str(tmp_path)!r}),
                **{{"training.processes_per_party": 2, "training.threads": 1}})), "alice")
            print("ready", flush=True)
            time.sleep(600)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mpctf.__file__).parents[1]), *sys.path])}
    # Its own session and process group, as every process ``mpctf launch`` starts.
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        helpers = _helper_ranks(proc.pid)
        assert len(helpers) == 1
        if how == "sigkill":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(helpers, timeout=30)
        assert not alive
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.flower
def test_flower_run_with_fsdp_parties_follows_the_one_process_run(tmp_path: Path) -> None:
    """On Flower each party worker is its own process and starts its rank 1. Full fine-tuning with SCAFFOLD,
    every party's model sharded over its two processes (FSDP, gloo): round 2's step corrections act on the
    sharded parameters, and the held-out loss after each round is the one-process local run's. The run ends with
    every rank."""
    before = {p.pid for p in _all_ranks()}
    common = {"federation.rounds": 2, "training.local_steps": 2, "training.mode": "full"}

    def config(processes: int, **more: object) -> dict:
        cfg = _config(tmp_path / str(processes), processes, **common, **more)
        del cfg["training"]["lora"]
        cfg["federation"]["strategy"] = {"name": "scaffold"}
        return cfg

    one = mpctf.run(config(1), run_dir=tmp_path / "one")
    two = mpctf.run(
        config(2, **{"backend.name": "flower", "training.sharding": "fsdp"}), run_dir=tmp_path / "two"
    )
    assert [r["round"] for r in two.rounds] == [0, 1, 2]
    for a, b in zip(one.rounds, two.rounds, strict=True):
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
    assert two.rounds[-1]["eval_loss"] < two.rounds[0]["eval_loss"]
    parties = [r for r in read_metrics(tmp_path / "two/metrics.jsonl") if r["event"] == "party_round"]
    assert len(parties) == 4 and all(r["status"] == "ok" and r["samples"] > 0 for r in parties)
    assert not [p for p in _all_ranks() if p.pid not in before]


def _all_ranks() -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "mpctf.party.rank_process" in " ".join(p.info["cmdline"] or [])
    ]
