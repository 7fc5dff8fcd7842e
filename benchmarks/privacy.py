"""Privacy in real federated runs: accuracy against ε, and the per-round cost of secure aggregation and CKKS.

Three parties fine-tune the built-in SmolLM2-135M-Instruct with LoRA on Rotten Tomatoes, split by movie (each
party holds its own movies; the server evaluates on movies no party has), on the local backend. Each run is one
``mpctf.run`` with a different ``privacy:`` section:

- ``plain``: no privacy (ε = ∞);
- ``dp8`` / ``dp2``: client-level DP-FedAvg (central), σ chosen so that ε after all rounds is 8 / 2 (δ = 1e-5);
- ``sgd8`` / ``sgd2``: sample-level DP-SGD (Opacus) in every party, σ chosen so that each party's ε is 8 / 2;
- ``secagg`` / ``he``: secure aggregation / CKKS, no noise: same accuracy as ``plain``, what they cost.

    python benchmarks/privacy.py --rounds 3 --chunk 16 --steps 2 --runs plain,dp8,dp2,sgd8,sgd2,secagg,he
    python benchmarks/privacy.py --wiring      # one round of the SecAgg / CKKS stages alone, no model (seconds)

The per-algorithm micro-benchmark without a model is ``benchmarks/privacy_overhead.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import MOVIE_TASK

import mpctf
from mpctf.privacy.accountant import epsilon_for
from mpctf.report.metrics import read_metrics

DELTA = 1e-5


def base_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return {
        "name": "privacy-bench",
        "seed": 0,
        "output_dir": str(out),
        "model": {"name": args.model},
        "training": {
            "mode": "lora",
            "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
            "batch_size": args.batch,
            "lr": args.lr,
            "max_length": 96,
            "local_steps": args.steps,
        },
        "task": copy.deepcopy(MOVIE_TASK),
        "data": {
            "dataset": {"builtin": "rotten_tomatoes"},
            "split": {"name": "by_key", "key": "movie_name"},
            "partition": {"name": "fixed_size", "size": args.chunk},
            "eval": {
                "test_fraction": 0.1,
                "group_by": "movie_name",
                "max_samples": args.eval,
                "batch_size": 32,
            },
        },
        "parties": [{"name": "alice"}, {"name": "bob"}, {"name": "carol"}],
        "federation": {"rounds": args.rounds, "strategy": {"name": "fedavg", "weight": "samples"}},
        "backend": {"name": "local"},
    }


def calibrate(target: float, *, sampling_rate: float, steps: int) -> float:
    """The noise multiplier σ whose ε after ``steps`` releases at rate ``sampling_rate`` is ``target`` (±0.5 %)."""
    low, high = 0.3, 200.0  # ε falls as σ grows
    while high - low > 1e-3 * low:
        mid = math.sqrt(low * high)
        eps = epsilon_for(noise_multiplier=mid, sampling_rate=sampling_rate, steps=steps, delta=DELTA)
        low, high = (mid, high) if eps > target else (low, mid)
    return high


def privacy_sections(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    steps_per_round = min(args.steps, math.ceil(args.chunk / args.batch))
    sgd_rate = 1 / math.ceil(args.chunk / args.batch)  # Opacus's Poisson rate: one expected pass per round
    sections: dict[str, dict[str, Any]] = {"plain": {}, "secagg": {"secure_aggregation": {}}}
    sections["he"] = {"homomorphic_encryption": {}}
    for eps in (8, 2):
        sigma = calibrate(eps, sampling_rate=1.0, steps=args.rounds)  # every party every round: q = 1
        sections[f"dp{eps}"] = {"client_dp": {"noise_multiplier": sigma, "clip_norm": args.clip}}
        sigma = calibrate(eps, sampling_rate=sgd_rate, steps=steps_per_round * args.rounds)
        sections[f"sgd{eps}"] = {
            "sample_dp": {"noise_multiplier": sigma, "max_grad_norm": args.max_grad_norm}
        }
    return sections


def summarize(name: str, privacy: dict[str, Any], run_dir: Path, seconds: float) -> dict[str, Any]:
    records = read_metrics(run_dir / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round"]
    parties = [r for r in records if r["event"] == "party_round" and r["status"] == "ok"]
    trained = rounds[1:]
    out: dict[str, Any] = {
        "run": name,
        "privacy": privacy,
        "accuracy": [r["accuracy"] for r in rounds],
        "eval_loss": [r["eval_loss"] for r in rounds],
        "wall_s": seconds,
        "round_s": sum(r["seconds"] for r in trained) / len(trained),
        "train_phase_s": sum(r["train_phase_seconds"] for r in trained) / len(trained),
        "party_train_s": sum(p["train_seconds"] for p in parties) / len(parties),
        "update_bytes_per_party": sum(p["bytes_up"] for p in parties) / len(parties),
        "update_fp32_bytes_per_party": sum(p["bytes_up_fp32"] for p in parties) / len(parties),
    }
    if "dp_epsilon" in trained[-1]:
        out["client_epsilon"] = [r["dp_epsilon"] for r in trained]
    sgd = [
        p["dp_sgd_epsilon"] for p in parties if p["round"] == trained[-1]["round"] and "dp_sgd_epsilon" in p
    ]
    if sgd:
        out["party_epsilon_max"] = max(sgd)
    if "privacy_exchange_seconds" in trained[-1] and (
        privacy.get("secure_aggregation") is not None or privacy.get("homomorphic_encryption") is not None
    ):
        out["exchange_s_per_round"] = sum(r["privacy_exchange_seconds"] for r in trained) / len(trained)
        out["server_s_per_round"] = sum(r["privacy_server_seconds"] for r in trained) / len(trained)
        out["exchange_bytes_per_round"] = sum(
            r["privacy_exchange_bytes_up"] + r["privacy_exchange_bytes_down"] for r in trained
        ) / len(trained)
        out["party_privacy_s"] = sum(p.get("privacy_seconds", 0.0) for p in parties) / len(parties)
        setup = next(r for r in records if r["event"] == "privacy")
        if "homomorphic_encryption_setup_seconds" in setup:
            out["he_setup_s"] = setup["homomorphic_encryption_setup_seconds"]
            out["he_setup_bytes"] = setup["homomorphic_encryption_setup_bytes"]
    return out


def lora_shaped_updates(parties: list[str], layers: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """SmolLM2-135M's LoRA update (r = 8 on q_proj 576→576 and v_proj 576→192): 15 360 values per layer."""
    import torch

    g = torch.Generator().manual_seed(seed)
    shapes = {
        "q_proj.lora_A": (8, 576),
        "q_proj.lora_B": (576, 8),
        "v_proj.lora_A": (8, 576),
        "v_proj.lora_B": (192, 8),
    }
    return {
        p: {
            f"layers.{i}.{n}": torch.randn(s, generator=g) * 1e-3
            for i in range(layers)
            for n, s in shapes.items()
        }
        for p in parties
    }


def wiring_round(
    args: argparse.Namespace, privacy: dict[str, Any], drop: str | None = None
) -> dict[str, Any]:
    """One round of the real privacy stages (party and server side, through the local backend) on
    LoRA-shaped updates, without a model: what SecAgg and CKKS add to a round, apart from training."""
    from mpctf.aggregation.fedavg import FedAvg
    from mpctf.config import load_config
    from mpctf.data.chunking import PartyPlan
    from mpctf.messages import RoundTask, Update
    from mpctf.party.privacy import PartyPrivacy
    from mpctf.runtime.local import LocalBackend
    from mpctf.server.privacy import ServerPrivacy

    config = load_config({**base_config(args, Path(tempfile.gettempdir())), "privacy": privacy})
    names = config.party_names
    updates = lora_shaped_updates(names, args.layers)
    sides = {p: PartyPrivacy(config.privacy, p) for p in names}
    party_s: list[float] = []

    def handler(party: str):
        def handle(payload: bytes) -> bytes:
            task = RoundTask.from_bytes(payload)
            if task.instructions["op"] in sides[party].ops:
                return sides[party].handle(task)
            if party == drop:
                raise RuntimeError("dropped")
            start = time.perf_counter()
            tensors, header, metrics = sides[party].protect(
                task, updates[party], num_samples=16, num_tokens=16
            )
            update = Update(party, task.round, tensors, 16, 16, metrics, header={"privacy": header})
            wire = update.to_bytes()
            party_s.append(time.perf_counter() - start)
            return wire

        return handle

    backend = LocalBackend({p: handler(p) for p in names})
    server = ServerPrivacy(config, FedAvg())
    setup = server.setup(backend)
    reference = {k: v * 0 for k, v in updates[names[0]].items()}
    server.strategy.begin_round(1, reference)
    plans = {p: PartyPlan(p, 100, 1000, 16, None, 5, 8, 1, None, None) for p in names}
    tasks = {
        p: RoundTask(1, {}, {"op": "train", "privacy": i}).to_bytes()
        for p, i in server.begin_round(1, names, plans, backend).items()
    }
    sizes = []
    start = time.perf_counter()
    for reply in backend.train_round(tasks, 600):
        if reply.payload is not None:
            sizes.append(len(reply.payload))
            server_start = time.perf_counter()
            server.receive_hidden(Update.from_bytes(reply.payload), reference)
            party_s.append(-(time.perf_counter() - server_start))  # server side, kept apart below
    server.finish_round(1, backend)
    mean = server.strategy.finalize()
    alive = [p for p in names if p != drop]
    expected = {k: sum(updates[p][k] for p in alive) / len(alive) for k in reference}
    error = max(float((mean[k] - expected[k]).abs().max()) for k in expected)
    m = server.last_metrics
    return {
        "values": sum(v.numel() for v in reference.values()),
        "party_protect_s": sum(s for s in party_s if s > 0) / max(1, len([s for s in party_s if s > 0])),
        "server_receive_s": -sum(s for s in party_s if s < 0),
        "update_bytes_per_party": sum(sizes) / len(sizes),
        "exchange_s": m["privacy_exchange_seconds"],
        "exchange_bytes": m["privacy_exchange_bytes_up"] + m["privacy_exchange_bytes_down"],
        "server_finish_s": m["privacy_server_seconds"],
        "round_wall_s": time.perf_counter() - start,
        "max_abs_error": error,
        **{k: v for k, v in setup.items() if "_setup_" in k or k == "he_public_context_bytes"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="tiny-llama for a quick smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16, help="samples per party per round")
    parser.add_argument("--steps", type=int, default=2, help="local optimizer steps per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval", type=int, default=100, help="held-out reviews scored per round")
    parser.add_argument("--clip", type=float, default=0.5, help="client DP clip norm C")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP-SGD per-example clip norm")
    parser.add_argument("--runs", default="plain,dp8,dp2,sgd8,sgd2,secagg,he")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file (default: stdout only)")
    parser.add_argument(
        "--wiring", action="store_true", help="only one round of the privacy stages on LoRA-shaped updates"
    )
    parser.add_argument("--layers", type=int, default=30, help="--wiring: LoRA layers (SmolLM2-135M has 30)")
    args = parser.parse_args()
    if args.wiring:
        cases = {
            "secagg": ({"secure_aggregation": {}}, None),
            "secagg, carol drops": ({"secure_aggregation": {}}, "carol"),
            "ckks": ({"homomorphic_encryption": {}}, None),
        }
        for name, (privacy, drop) in cases.items():
            print(json.dumps({"case": name, **wiring_round(args, privacy, drop)}), flush=True)
        return
    sections = privacy_sections(args)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs.split(","):
            config = {**base_config(args, Path(tmp)), "privacy": sections[name]}
            start = time.perf_counter()
            mpctf.run(config, run_dir=Path(tmp) / name)
            result = summarize(name, sections[name], Path(tmp) / name, time.perf_counter() - start)
            line = json.dumps(result)
            print(line, flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
