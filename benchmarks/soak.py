"""Soak test: a federation of real party processes while parties are killed at random.

    python benchmarks/soak.py [--rounds 20] [--parties 4] [--seed 0] [--out soak.json]

The ``processes`` backend runs each party in its own worker process (the tiny random 2-layer model, LoRA). When a
round ends with every party up, a seeded coin decides whether one random party's worker gets SIGKILL a moment
into the next round (see :class:`Killer`), so every round keeps at least ``parties - 1 >= min_parties`` answers.
The launcher restarts a dead worker when the next round begins; the party rejoins once its model is loaded.

Reported:

- rounds completed, of those asked;
- updates lost in completed rounds: a party that was sent the round's work and was not killed during that round,
  but whose update was not aggregated (the target is 0; a killed party's round is a failure, not a loss);
- recovery time per kill: from SIGKILL to the party's next accepted update, and to its new worker being ready;
- that every checkpoint in the run directory loads (the server state, and the adapter with PEFT).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mpctf.api import run  # noqa: E402
from mpctf.report.metrics import read_metrics  # noqa: E402
from support import tiny_config_dict  # noqa: E402


class Killer:
    """After a round ends, when every party is up, maybe (seeded coin) kill one in the coming round.

    Called by the round loop when it records a round, before the next round starts: with every worker ready, the
    next round has every party in it, and losing one still leaves ``parties - 1 >= min_parties`` answers. The kill
    lands ``delay_s`` (uniform range) seconds later, inside that round or, if it was short, just after it.
    """

    def __init__(
        self, run_dir: Path, parties: list[str], p_kill: float, delay_s: tuple[float, float], seed: int
    ):
        self.run_dir, self.parties, self.p_kill, self.delay_s = run_dir, parties, p_kill, delay_s
        self.rng = random.Random(seed)
        self.kills: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.pending = threading.Event()

    def _pid(self, party: str) -> int | None:
        try:
            pid = int(json.loads((self.run_dir / "parties" / party / "worker.json").read_text())["pid"])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, KeyError):
            return None

    def __call__(self, record: dict[str, Any]) -> None:
        if record["event"] != "round":
            return
        alive = {p: pid for p in self.parties if (pid := self._pid(p)) is not None}
        # One kill at a time: a round shorter than the delay must not get a second one scheduled.
        if self.pending.is_set() or len(alive) < len(self.parties) or self.rng.random() >= self.p_kill:
            return
        party, delay = self.rng.choice(sorted(alive)), self.rng.uniform(*self.delay_s)
        self.pending.set()
        threading.Thread(target=self._kill, args=(party, alive[party], delay), daemon=True).start()

    def _kill(self, party: str, pid: int, delay: float) -> None:
        if self.stop.wait(delay):
            return
        os.kill(pid, signal.SIGKILL)
        self.pending.clear()
        kill = {"party": party, "pid": pid, "time": time.time()}
        self.kills.append(kill)
        while not self.stop.is_set():  # until the launcher's new worker for this party is ready
            new = self._pid(party)
            if new is not None and new != pid:
                kill["ready_after_s"] = time.time() - kill["time"]
                return
            time.sleep(0.1)


def analyse(run_dir: Path, kills: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    records = read_metrics(run_dir / "metrics.jsonl")
    ends = {r["round"]: r["time"] for r in records if r["event"] == "round"}
    completed = sorted(r for r in ends if r > 0)
    party_rounds = [r for r in records if r["event"] == "party_round"]

    def round_of(t: float) -> int | None:
        # Round r runs from the end of round r-1 (its record) to the end of round r.
        return next((r for r in completed if ends.get(r - 1, 0.0) < t <= ends[r]), None)

    killed_in = {(round_of(k["time"]), k["party"]) for k in kills}
    lost = [
        {"round": r["round"], "party": r["party"], "status": r["status"], "reason": r.get("reason")}
        for r in party_rounds
        if r["round"] in ends and r["status"] != "ok" and (r["round"], r["party"]) not in killed_in
    ]
    for kill in kills:
        back = [
            r
            for r in party_rounds
            if r["party"] == kill["party"] and r["status"] == "ok" and r["time"] > kill["time"]
        ]
        kill["next_update_after_s"] = back[0]["time"] - kill["time"] if back else None
        kill["round"] = round_of(kill["time"])
    recovered = [k["next_update_after_s"] for k in kills if k["next_update_after_s"] is not None]
    ready = [k["ready_after_s"] for k in kills if "ready_after_s" in k]
    return {
        "rounds_asked": rounds,
        "rounds_completed": len(completed),
        "updates_accepted": sum(r["status"] == "ok" for r in party_rounds),
        "party_rounds_failed_by_kills": sum(r["status"] != "ok" for r in party_rounds) - len(lost),
        "updates_lost_in_completed_rounds": len(lost),
        "lost": lost,
        "kills": len(kills),
        "kills_before_the_end_recovered": len(recovered),
        "recovery_to_next_update_s": _summary(recovered),
        "recovery_to_worker_ready_s": _summary(ready),
        "kill_log": kills,
    }


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "max": max(values), "min": min(values)}


def check_checkpoints(run_dir: Path) -> dict[str, Any]:
    """Load every round's server state and its adapter (with PEFT, on the tiny model)."""
    import torch

    from mpctf.config import load_config
    from mpctf.model.bundle import ModelBundle

    model = ModelBundle.load(load_config(run_dir / "config.yaml")).model  # a PeftModel
    folders = sorted((run_dir / "checkpoints").glob("round-*"))
    loaded = 0
    for folder in folders:
        state = torch.load(folder / "server_state.pt", weights_only=False)
        assert state["round"] == int(folder.name.split("-")[1]), folder
        assert all(torch.isfinite(t).all() for t in state["global_state"].values()), folder
        model.load_adapter(str(folder / "adapter"), adapter_name=folder.name)
        loaded += 1
    return {"checkpoints": len(folders), "checkpoints_loaded": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--parties", type=int, default=4)
    parser.add_argument("--min-parties", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--p-kill", type=float, default=0.6, help="chance of a kill after a round, all parties up"
    )
    parser.add_argument("--kill-delay", type=float, nargs=2, default=(0.3, 3.0), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="mpctf-soak-") as tmp:
        names = [f"p{i}" for i in range(args.parties)]
        cfg = tiny_config_dict(
            Path(tmp),
            **{
                "backend.name": "processes",
                "parties": [{"name": n} for n in names],
                "federation.rounds": args.rounds,
                "federation.min_parties": args.min_parties,
                "federation.round_timeout_s": 120,
                "training.threads": 1,
            },
        )
        run_dir = Path(tmp) / "run"
        killer = Killer(run_dir, names, args.p_kill, tuple(args.kill_delay), args.seed)
        began = time.time()
        run(cfg, run_dir=run_dir, listeners=[killer])
        killer.stop.set()
        results = {
            "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
            "wall_s": time.time() - began,
            **analyse(run_dir, killer.kills, args.rounds),
            **check_checkpoints(run_dir),
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
