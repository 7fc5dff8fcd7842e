"""Per-round transport overhead of the Flower runtime, with a handler that does no work.

Starts a real local federation (SuperLink, and per party a worker and a SuperNode), then times rounds whose
task and reply are both PAYLOAD bytes (random, so Flower's content-addressed chunks cannot be deduplicated):
1 KB (a bare instruction), 2 MB (a LoRA adapter's state), 40 MB (a larger adapter). A round is timed from
``train_round`` until its last reply. The first round of each size is a warm-up and is not counted.

    PYTHONPATH=src python benchmarks/overhead_transport.py [--parties 2] [--rounds 3] [--run-dir DIR]

This file is also the handler factory and the driver of the run it starts (imported by the worker and ServerApp
processes from this folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mpctf.launch.flower_local import launch_flower_local
from mpctf.launch.flower_services import PartySpec
from mpctf.runtime.base import Backend, PartyHandler

SIZES = {"1 KB": 1_000, "2 MB": 2_000_000, "40 MB": 40_000_000}


def make_reverse_handler() -> PartyHandler:
    """The no-op party: replies with the task bytes reversed.

    Not unchanged: Flower addresses chunks by content, and an echoed reply would not be uploaded again.
    """
    return lambda payload: payload[::-1]


def measure(backend: Backend, settings: dict[str, str]) -> None:
    """Driver: time ``rounds`` + 1 rounds per payload size, write seconds per round to ``out``."""
    parties = backend.party_names()
    rounds = int(settings["rounds"])
    results: dict[str, list[float]] = {}
    for label, size in SIZES.items():
        results[label] = []
        for _ in range(rounds + 1):
            tasks = {p: os.urandom(size) for p in parties}
            started = time.perf_counter()
            replies = list(backend.train_round(tasks, timeout_s=600))
            elapsed = time.perf_counter() - started
            failed = [f"{r.party}: {r.error}" for r in replies if r.payload != tasks[r.party][::-1]]
            if failed:
                raise RuntimeError(f"{label} round failed: {failed}")
            results[label].append(elapsed)
    Path(settings["out"]).write_text(json.dumps({"parties": parties, "seconds": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parties", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-dir", type=Path)
    args = parser.parse_args()

    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="mpctf-overhead-"))
    out = run_dir / "overhead.json"
    started = time.perf_counter()
    launch_flower_local(
        run_dir,
        [PartySpec(f"p{i}") for i in range(args.parties)],
        "overhead_transport:measure",
        {"rounds": str(args.rounds), "out": str(out)},
        handler_factory="overhead_transport:make_reverse_handler",
    )
    total = time.perf_counter() - started
    data = json.loads(out.read_text())
    parties = len(data["parties"])
    print(
        f"Flower transport, {parties} parties, no-op handler (reply = task reversed), {os.cpu_count()} CPUs"
    )
    print(f"{'payload':>8}  {'s/round (mean)':>14}  {'min':>6}  {'max':>6}  (warm-up)")
    for label, seconds in data["seconds"].items():
        timed = seconds[1:]
        print(
            f"{label:>8}  {statistics.mean(timed):14.2f}  {min(timed):6.2f}  {max(timed):6.2f}  ({seconds[0]:.2f})"
        )
    print(f"whole launch, start to teardown: {total:.1f} s; run directory {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
