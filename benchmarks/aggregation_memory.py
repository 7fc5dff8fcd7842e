"""Server peak memory of one aggregation round, by strategy and number of parties.

Each (strategy, parties) cell runs in a fresh process: it builds a global state of ``--mib`` MiB of float32
tensors, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), then runs ``begin_round``, one
``accumulate`` per party (each update generated just before it arrives and dropped after, as the round loop
does) and ``finalize``. "extra" is the peak RSS of that round above the RSS at the reset (which already holds
the global state); it includes the one update in flight and the new global state ``finalize`` returns.
"seconds" is the time spent inside the strategy (validation included), not in generating updates. Torch runs
on one thread so cells compare on a shared machine.

Linux only (``/proc``). glibc's malloc is pinned to mmap large blocks so freed tensors leave the RSS at once.

    python benchmarks/aggregation_memory.py                      # fedavg, fedadam, dynamic, median × 2, 8, 32
    python benchmarks/aggregation_memory.py --mib 10 --parties 2 4 --strategies fedavg median
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

TENSORS = 20  # the state is split like a model's: many tensors of equal size


def numel_per_tensor(mib: float) -> int:
    return int(mib * 2**20 / 4 / TENSORS)


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        found = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(found.group(1))


def measure(strategy: str, parties: int, mib: float) -> dict[str, float]:
    """Run one round in this process and return its peak extra RSS (MiB) and wall time (s)."""
    import torch

    from mpctf.aggregation import STRATEGIES
    from mpctf.messages import Update

    torch.set_num_threads(1)
    numel = numel_per_tensor(mib)
    global_state = {f"layer{i}.weight": torch.randn(numel) for i in range(TENSORS)}
    cls = STRATEGIES.get(strategy)
    server = cls(cls.Params())
    generator = torch.Generator().manual_seed(0)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark to the current RSS
    base = _kib("VmRSS")
    seconds = 0.0  # time in the strategy only, not in generating the updates
    start = time.perf_counter()
    server.begin_round(1, global_state)
    seconds += time.perf_counter() - start
    for k in range(parties):
        delta = {n: torch.randn(t.shape, generator=generator).mul_(1e-3) for n, t in global_state.items()}
        update = Update(f"p{k}", 1, delta, num_samples=10 + k, num_tokens=100, metrics={"loss": 1.0 + k})
        start = time.perf_counter()
        server.accumulate(update)
        seconds += time.perf_counter() - start
        del delta, update
    start = time.perf_counter()
    new_state = server.finalize()
    seconds += time.perf_counter() - start
    peak = _kib("VmHWM")
    del new_state
    return {"extra_mib": (peak - base) / 1024, "seconds": seconds}


def run_cell(strategy: str, parties: int, mib: float) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--one", strategy, str(parties), "--mib", str(mib)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=50.0, help="size of the trainable state in MiB")
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "fedadam", "dynamic", "median"])
    parser.add_argument("--one", nargs=2, metavar=("STRATEGY", "PARTIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.mib)))
        return

    from mpctf.aggregation import STRATEGIES

    state_mib = numel_per_tensor(args.mib) * TENSORS * 4 / 2**20
    print(
        f"state: {state_mib:.1f} MiB of float32 in {TENSORS} tensors; extra = peak RSS of the round above the"
    )
    print("RSS before it (global state already resident)\n")
    print(
        f"| {'strategy':<9} | buffers | {'parties':>7} | {'extra MiB':>9} | {'x state':>7} | {'seconds':>7} |"
    )
    print(f"|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    for strategy in args.strategies:
        buffers = "yes" if STRATEGIES.get(strategy).buffers_updates else "no"
        for parties in args.parties:
            cell = run_cell(strategy, parties, args.mib)
            extra, seconds = cell["extra_mib"], cell["seconds"]
            ratio = extra / state_mib
            row = f"| {strategy:<9} | {buffers:<7} | {parties:>7} | {extra:>9.1f} | {ratio:>7.2f} |"
            print(f"{row} {seconds:>7.2f} |", flush=True)


if __name__ == "__main__":
    main()
