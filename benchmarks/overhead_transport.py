"""Per-round transport overhead of the Flower runtime, with a handler that does no work.

Starts a real local federation (SuperLink, and per party a worker and a SuperNode), then times rounds whose
task and reply are both PAYLOAD bytes (random, so Flower's content-addressed chunks cannot be deduplicated):
1 KB (a bare instruction), 2 MB (a LoRA adapter's state), 40 MB (a larger adapter). A round is timed from
``train_round`` until its last reply. The first round of each size is a warm-up and is not counted.
``--sizes`` replaces those sizes (``2.2GB`` with one party measures an exchange above 2 GiB, as a full model of
550 M parameters in fp32 would need). The whole process tree's resident memory is sampled every 0.2 s: the
peak of its sum and each process kind's own peak are printed, the sum also per GB of payload.

    PYTHONPATH=src python benchmarks/overhead_transport.py [--parties 2] [--rounds 3] [--sizes 1KB,2MB]

This file is also the handler factory and the driver of the run it starts (imported by the worker and ServerApp
processes from this folder).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _tree_memory import TreeMemory

from mpctf.launch.flower_local import launch_flower_local
from mpctf.launch.flower_services import PartySpec
from mpctf.runtime.base import Backend, PartyHandler, Task

SIZES = "1KB,2MB,40MB"
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
#: Process kinds of a local federation, by what their command line contains (first match wins).
KINDS = [
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
    "worker",
]


def parse_sizes(text: str) -> dict[str, int]:
    """``"1KB,2.2GB"`` -> ``{"1KB": 1000, "2.2GB": 2200000000}``."""
    sizes = {}
    for label in text.split(","):
        match = re.fullmatch(r"([0-9.]+)(KB|MB|GB)", label.strip())
        if match is None:
            raise SystemExit(f"--sizes: {label!r} is not a size like 2MB or 2.2GB")
        sizes[label.strip()] = int(float(match[1]) * UNITS[match[2]])
    return sizes


def make_reverse_handler() -> PartyHandler:
    """The no-op party: replies with the task bytes reversed.

    Not unchanged: Flower addresses chunks by content, and an echoed reply would not be uploaded again.
    """
    return lambda payload: payload[::-1]


#: Positions of a task whose bytes a reply must hold reversed; sampled, so nothing keeps the task itself.
CHECKED = 64


def reversal_probe(payload: bytes) -> dict[int, int]:
    """Where a correct reply to ``payload`` holds which byte (length included, at key -1)."""
    n = len(payload)
    positions = {0, n - 1, *(random.randrange(n) for _ in range(CHECKED))} if n else set()
    return {-1: n, **{i: payload[n - 1 - i] for i in positions}}


def _is_reversed(reply: bytes | None, probe: dict[int, int]) -> bool:
    if reply is None or len(reply) != probe[-1]:
        return False
    return all(reply[i] == byte for i, byte in probe.items() if i >= 0)


def measure(backend: Backend, settings: dict[str, str]) -> None:
    """Driver: time ``rounds`` + 1 rounds per payload size, write seconds per round to ``out``.

    Each party's task is built when the backend sends it, as the round loop's are, and only a probe of it is
    kept to check the reply: the driver holds no task of its own."""
    parties = backend.party_names()
    rounds = int(settings["rounds"])
    results: dict[str, list[float]] = {}
    for label, size in parse_sizes(settings["sizes"]).items():
        results[label] = []
        for _ in range(rounds + 1):
            probes: dict[str, dict[int, int]] = {}

            def task(party: str, size: int = size, probes: dict[str, dict[int, int]] = probes) -> Task:
                def build() -> bytes:
                    payload = os.urandom(size)
                    probes[party] = reversal_probe(payload)
                    return payload

                return build

            started = time.perf_counter()
            failed = []
            for r in backend.train_round({p: task(p) for p in parties}, timeout_s=3600):
                if not _is_reversed(r.payload, probes.get(r.party, {-1: -1})):
                    failed.append(f"{r.party}: {r.error or 'wrong reply'}")
                del r  # one reply at a time: keeping them all would hold a payload per party
            elapsed = time.perf_counter() - started
            if failed:
                raise RuntimeError(f"{label} round failed: {failed}")
            results[label].append(elapsed)
    Path(settings["out"]).write_text(json.dumps({"parties": parties, "seconds": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parties", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default=SIZES, help="payload sizes per party (default: %(default)s)")
    parser.add_argument("--run-dir", type=Path)
    args = parser.parse_args()
    largest = max(parse_sizes(args.sizes).values())

    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="mpctf-overhead-"))
    out = run_dir / "overhead.json"
    started = time.perf_counter()
    memory = TreeMemory(KINDS)
    memory.start()
    try:
        launch_flower_local(
            run_dir,
            [PartySpec(f"p{i}") for i in range(args.parties)],
            "overhead_transport:measure",
            {"rounds": str(args.rounds), "out": str(out), "sizes": args.sizes},
            handler_factory="overhead_transport:make_reverse_handler",
        )
    finally:
        memory.stop()
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
    gb = 1e9
    print(
        f"peak resident memory of the whole federation: {memory.peak_total / gb:.2f} GB = "
        f"{memory.peak_total / (largest * args.parties):.2f} x the largest payload of all parties "
        f"({largest * args.parties / gb:.3f} GB per direction)"
    )
    for kind, peak in sorted(memory.peak_by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:>18}: peak {peak / gb:.2f} GB")


if __name__ == "__main__":
    sys.exit(main())
