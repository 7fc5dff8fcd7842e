"""One party's full fine-tuning round on one process, on N processes with DDP, and on N processes with FSDP.

    python benchmarks/party_sharding.py [--processes 2] [--steps 4] [--layers 0] [--out FILE]

The party trains SmolLM2-135M-Instruct (every weight; ``--layers N`` keeps only the first N decoder layers) on
Rotten Tomatoes reviews, one round of ``--steps`` optimizer steps of 8 reviews, through the same
:class:`~mpctf.party.worker.PartyWorker` a real party runs. Each layout runs in a fresh child process; a
sampler reads the resident memory of the party process (rank 0) and of its extra ranks every 0.2 s (large
allocations served by mmap, so that memory freed during the round leaves the resident size). Reported: the
peak memory of rank 0 and of the largest other rank, seconds per step, and how far the update is from the
one-process update (largest absolute difference over the largest entry). On a CPU the memory is the
process's whole footprint (Python, torch, the tokenized data) on top of the model's parameters, gradients and
AdamW moments, which FSDP divides among the ranks and DDP repeats on each.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _harness import MOVIE_TASK
from _tree_memory import TreeMemory

#: layout → (processes (None: ``--processes``), sharding, micro-batches per step on one process).
#: ``accumulate`` is the control: one process, the same steps in two micro-batches, so only the order of float
#: sums changes; its distance to ``one`` is what rounding alone does to a full fine-tuning update.
#: What the command line of a party's extra rank contains.
RANK = "mpctf.party.distributed"
LAYOUTS = {
    "one": (1, "ddp", 1),
    "accumulate": (1, "ddp", 2),
    "ddp": (None, "ddp", 1),
    "fsdp": (None, "fsdp", 1),
}


def party_config(args: argparse.Namespace, processes: int, sharding: str, out: Path) -> dict[str, Any]:
    model: dict[str, Any] = {"name": "smollm2-135m-instruct"}
    if args.layers:
        model["num_layers"] = args.layers
    return {
        "name": "sharding",
        "output_dir": str(out),
        "model": model,
        "training": {
            "mode": "full",
            "lr": 3e-5,
            "batch_size": 8,
            "max_length": 64,
            "local_steps": args.steps,
            "processes_per_party": processes,
            "sharding": sharding,
        },
        "task": copy.deepcopy(MOVIE_TASK),
        "data": {
            "dataset": {"builtin": "rotten_tomatoes", "max_samples": 400},
            "split": {"name": "by_key", "key": "movie_name"},
            "partition": {"name": "fixed_size", "size": 8 * args.steps},
        },
        "parties": [{"name": "alice"}, {"name": "bob"}],
        # FSDP needs a party to own its process, as it does on the processes backend.
        "backend": {"name": "processes"},
    }


def run_layout(args: argparse.Namespace, layout: str) -> dict[str, Any]:
    """In the child process: one round of party alice; writes the update for the parent to compare."""
    import torch

    from mpctf.comm import chain_from_specs
    from mpctf.config import load_config
    from mpctf.messages import RoundTask
    from mpctf.model.bundle import ModelBundle
    from mpctf.party.planning import local_plans
    from mpctf.party.worker import PartyWorker

    processes, sharding, micro_batches = LAYOUTS[layout]
    out = Path(args.workdir)
    config = load_config(party_config(args, processes or args.processes, sharding, out))
    plan = local_plans(config)["alice"]
    plan = dataclasses.replace(
        plan, micro_batch=plan.micro_batch // micro_batches, grad_accum=plan.grad_accum * micro_batches
    )
    bundle = ModelBundle.load(config)
    state = bundle.mode.get_state(bundle.model)
    encoded, header = chain_from_specs([]).encode(state, {})
    worker = PartyWorker(config, "alice", bundle=bundle)
    try:
        task = RoundTask(1, encoded, {"plan": dataclasses.asdict(plan), "downlink": header, "strategy": {}})
        started = time.perf_counter()
        update = worker.train(task)
        seconds = time.perf_counter() - started
    finally:
        worker.close()
    torch.save(update.tensors, out / f"{layout}.pt")
    return {
        "steps": int(update.metrics["steps"]),
        "round_seconds": seconds,
        "train_seconds": update.metrics["train_seconds"],
        "parameters": sum(t.numel() for t in state.values()),
    }


def measure(args: argparse.Namespace, layout: str, workdir: Path) -> dict[str, Any]:
    """Run one layout in a child process, sampling the memory of it and of the ranks it starts."""
    argv = [sys.executable, __file__, "--child", layout, "--workdir", str(workdir)]
    argv += ["--processes", str(args.processes), "--steps", str(args.steps), "--layers", str(args.layers)]
    # glibc keeps freed heap blocks, so a process's resident size would show every transient the run ever
    # freed (measured: 2.8 GB resident, 1.0 GB after malloc_trim, for an FSDP rank). Served by mmap instead,
    # large blocks go back to the system when freed and the peak follows the memory actually in use.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    memory = TreeMemory([RANK, "--child"])
    memory.start()
    stdout, _ = child.communicate()
    memory.stop()
    if child.returncode:
        raise SystemExit(f"layout {layout!r} failed with exit code {child.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    # Rank 0 is the child itself; with more than two processes the other ranks' column is the largest of them.
    peaks = [memory.peak_by_kind[kind] for kind in ("--child", RANK) if kind in memory.peak_by_kind]
    result["peak_rss_gb"] = [round(rss / 1e9, 2) for rss in peaks]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layers", type=int, default=0, help="keep only the first N decoder layers (0: all)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--child", choices=sorted(LAYOUTS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_layout(args, args.child)))
        return

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results = {layout: measure(args, layout, workdir) for layout in LAYOUTS}
        reference = torch.load(workdir / "one.pt")
        scale = max(float(t.abs().max()) for t in reference.values())
        for layout, result in results.items():
            tensors = torch.load(workdir / f"{layout}.pt")
            diffs = [(tensors[k] - reference[k]).abs() for k in reference]
            result["max_diff_over_scale"] = max(float(d.max()) for d in diffs) / scale
            # AdamW magnifies rounding where a gradient is near zero, so a few entries stand out.
            result["entries_over_1e-4"] = sum(int((d > 1e-4 * scale).sum()) for d in diffs)
    n = args.processes
    params = results["one"]["parameters"]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU; torch {torch.__version__}",
        f"Command: python benchmarks/party_sharding.py --processes {n} --steps {args.steps}"
        + (f" --layers {args.layers}" if args.layers else ""),
        f"Full fine-tuning of {params / 1e6:.1f} M parameters, {results['one']['steps']} steps of 8 reviews.",
        "",
        "| layout | peak memory per rank (GB) | seconds per step | update vs one process: max diff / max entry "
        "| entries off by more than 1e-4 of max |",
        "|---|---|---|---|---|",
    ]
    names = {
        "one": "1 process",
        "accumulate": "1 process, 2 micro-batches per step (control)",
        "ddp": f"{n} processes, DDP",
        "fsdp": f"{n} processes, FSDP",
    }
    for layout, r in results.items():
        per_step = r["train_seconds"] / max(r["steps"], 1)
        memory = ", ".join(f"{gb:.2f}" for gb in r["peak_rss_gb"])
        lines.append(
            f"| {names[layout]} | {memory} | {per_step:.2f} | {r['max_diff_over_scale']:.1e} "
            f"| {r['entries_over_1e-4']} of {params} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
