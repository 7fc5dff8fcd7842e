"""Shared pieces of the result benchmarks (collaboration, strategies, communication).

Every measured run goes through the public API, ``mpctf.run(config_dict, run_dir=...)``, on the ``local``
backend; nothing here trains a model itself. Each run happens in a fresh child process so that its peak memory
(``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on a GPU) belongs to that run alone. On the ``local``
backend all parties live in that one process and share one loaded model, training one after another, so the
process peak is the peak of the largest party's step plus the server's copy of the trainable state: an upper
bound for what each party needs.

Two budgets exist: ``--quick`` (the random 2-layer ``tiny-llama`` on a few hundred rows: seconds per run, checks
the pipeline, numbers mean nothing) and the real one (SmolLM2-135M-Instruct + LoRA on Rotten Tomatoes split by
movie, evaluated on reviews of held-out movies).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import functools
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT = "Movie review: {text}\nIs this review positive or negative? Answer:"
#: The `task` section every Rotten Tomatoes benchmark uses: the quickstart's prompt and verbalizer.
MOVIE_TASK: dict[str, Any] = {
    "prompt": PROMPT,
    "text_field": "text",
    "label_field": "category",
    "labels": {"fresh": " positive", "rotten": " negative"},
}


@dataclass(frozen=True)
class Budget:
    """The knobs every benchmark shares; the same budget is used for every method being compared."""

    # The CPU default is sized for a 2-core machine: one SmolLM2 step of 8 reviews takes ~2 s there and scoring
    # 128 held-out reviews ~10 s (benchmarks/evaluation.py), so a 4-party run of 3 rounds takes ~2.5 minutes.
    model: str = "smollm2-135m-instruct"
    rounds: int = 3
    local_steps: int = 3
    batch_size: int = 8
    lr: float = 2e-3
    max_length: int = 64
    eval_samples: int = 100
    #: Score the global model after every N-th round (and always the last): ``data.eval.every_rounds``.
    eval_every: int = 1
    #: Held-out reviews per evaluation batch. On 2 CPU cores 16 scored 128 reviews in 9.3 s, 32 in 11.2 s and
    #: 128 in 22 s (medians of three, SmolLM2-135M): the larger batches' activations leave the caches.
    eval_batch_size: int = 16
    max_samples: int | None = None  # rows of the dataset used (None: all)
    lora_r: int = 8

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            model="tiny-llama",
            rounds=2,
            local_steps=2,
            batch_size=4,
            lr=5e-3,
            max_length=64,
            eval_samples=40,
            max_samples=400,
            lora_r=4,
        )

    @classmethod
    def gpu(cls) -> Budget:
        """Bigger budgets for a machine with CUDA: more rounds and steps, the full held-out set (capped)."""
        return cls(
            rounds=10, local_steps=10, batch_size=16, max_length=128, eval_samples=1000, eval_batch_size=64
        )


def split_spec(split: str) -> dict[str, Any]:
    """``movie``: whole movies per party (natural non-IID); ``label_skew``: pathological label skew, where
    each label's rows go to the parties by Dirichlet(0.05) proportions, so most parties hold almost one label."""
    if split == "movie":
        return {"name": "by_key", "key": "movie_name"}
    if split == "label_skew":
        return {"name": "dirichlet", "alpha": 0.05, "min_party_size": 16}
    if split == "iid":
        return {"name": "iid"}
    raise SystemExit(f"unknown split {split!r}; use movie, label_skew or iid")


def party_names(n: int) -> list[str]:
    return [f"party{i}" for i in range(n)]


def base_config(
    budget: Budget,
    *,
    name: str,
    seed: int,
    num_parties: int,
    split: str,
    out: Path,
    strategy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A federation of ``num_parties`` parties, each doing ``local_steps`` optimizer steps per round."""
    dataset: dict[str, Any] = {"builtin": "rotten_tomatoes"}
    if budget.max_samples is not None:
        dataset["max_samples"] = budget.max_samples
    return {
        "name": name,
        "seed": seed,
        "output_dir": str(out),
        "model": {"name": budget.model},
        "training": {
            "batch_size": budget.batch_size,
            "lr": budget.lr,
            "max_length": budget.max_length,
            "local_steps": budget.local_steps,
            "lora": {"r": budget.lora_r, "alpha": 2 * budget.lora_r, "target_modules": ["q_proj", "v_proj"]},
        },
        "task": copy.deepcopy(MOVIE_TASK),
        "data": {
            "dataset": dataset,
            "split": split_spec(split),
            # One round's chunk is exactly the local-step budget, so no party sees more than its steps allow.
            "partition": {"name": "fixed_size", "size": budget.batch_size * budget.local_steps},
            "eval": {
                "test_fraction": 0.1,
                "group_by": "movie_name",
                "max_samples": budget.eval_samples,
                "every_rounds": budget.eval_every,
                "batch_size": budget.eval_batch_size,
            },
        },
        "parties": [{"name": p} for p in party_names(num_parties)],
        "federation": {
            "rounds": budget.rounds,
            "min_parties": 1,
            "strategy": strategy or {"name": "fedavg"},
        },
        "backend": {"name": "local"},
    }


# --- one run in a child process ------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What a benchmark table needs from one ``mpctf.run``."""

    #: Indexed by round (0: before training); ``None`` for a round the run did not score (``data.eval``).
    accuracy_per_round: list[float | None]
    seconds: float
    bytes_up: int
    bytes_down: int
    bytes_up_fp32: int
    peak_mem_bytes: int
    party_rounds: list[dict[str, Any]] = field(default_factory=list)
    eval_loss_per_round: list[float | None] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        # A run always scores its last round.
        return float(self.accuracy_per_round[-1])  # type: ignore[arg-type]

    @property
    def final_eval_loss(self) -> float:
        return float(self.eval_loss_per_round[-1])  # type: ignore[arg-type]

    @property
    def bytes_moved(self) -> int:
        return self.bytes_up + self.bytes_down


def _child(config: dict[str, Any], run_dir: str, queue: Any) -> None:
    try:
        import torch

        import mpctf
        from mpctf.report.metrics import read_metrics

        began = time.perf_counter()
        result = mpctf.run(config, run_dir=run_dir)
        seconds = time.perf_counter() - began
        if torch.cuda.is_available():
            peak = int(torch.cuda.max_memory_allocated())
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        last = result.rounds[-1]
        records = read_metrics(Path(run_dir) / "metrics.jsonl")
        by_round = {r["round"]: r for r in result.rounds}

        def per_round(key: str) -> list[float | None]:
            return [
                float(by_round[n][key]) if key in by_round.get(n, {}) else None
                for n in range(last["round"] + 1)
            ]

        queue.put(
            {
                "accuracy_per_round": per_round("accuracy"),
                "eval_loss_per_round": per_round("eval_loss"),
                "seconds": seconds,
                "bytes_up": int(last.get("cumulative_bytes_up", 0)),
                "bytes_down": int(last.get("cumulative_bytes_down", 0)),
                "bytes_up_fp32": int(last.get("cumulative_bytes_up_fp32", 0)),
                "peak_mem_bytes": peak,
                "party_rounds": [r for r in records if r["event"] == "party_round"],
            }
        )
    except BaseException as exc:  # reported to the parent, which stops the benchmark with the message
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


@functools.cache
def _import_model_stack(model: str) -> None:
    """Import once, in the parent, what every forked run imports to load ``model``: transformers' lazy modules,
    the model's class, its tokenizer's and PEFT were ~4.5 s of each run's start (cProfile of ``ModelBundle.load``).
    Imports only: the parent computes nothing with torch, so each child's thread pool starts fresh."""
    import peft  # noqa: F401
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from mpctf.model.loading import load_tokenizer, tokenizer_source

    load_tokenizer(model)
    MODEL_FOR_CAUSAL_LM_MAPPING[
        type(AutoConfig.from_pretrained(tokenizer_source(model), local_files_only=True))
    ]


def run_isolated(config: dict[str, Any], run_dir: Path, start_method: str | None = None) -> RunOutcome:
    """``mpctf.run(config, run_dir=run_dir)`` in a fresh child process; its peak memory is this run's alone.

    ``start_method`` is the multiprocessing one; by default ``fork`` on CPU (cheap: what the parent imported is
    shared) and ``spawn`` where CUDA is present, since CUDA cannot survive a fork."""
    method = start_method or ("spawn" if _cuda() else "fork")
    if method == "fork":
        _import_model_stack(config["model"]["name"])
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(copy.deepcopy(config), str(run_dir), queue))
    proc.start()
    reply = queue.get()
    proc.join()
    if "error" in reply:
        raise SystemExit(f"run {config['name']} failed: {reply['error']}")
    return RunOutcome(**reply)


def budget_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every result benchmark shares (budget, seeds)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random model on 400 rows: pipeline check only")
    ap.add_argument("--gpu", action="store_true", help="bigger budgets (automatic when CUDA is available)")
    ap.add_argument("--seeds", type=int, help="how many seeds (default 3; 1 with --quick)")
    ap.add_argument(
        "--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1 (to add seeds to an earlier run)"
    )
    ap.add_argument("--rounds", type=int, help="override the budget's rounds")
    ap.add_argument(
        "--local-steps", type=int, help="override the budget's optimizer steps per party per round"
    )
    ap.add_argument("--eval-samples", type=int, help="override the number of held-out reviews scored")
    ap.add_argument("--batch-size", type=int, help="override the reviews per optimizer step")
    ap.add_argument("--eval-every", type=int, help="score the model after every N-th round (and the last)")
    return ap


def is_cpu_budget(args: argparse.Namespace) -> bool:
    """Whether ``pick_budget`` picks the CPU budget (neither ``--quick`` nor ``--gpu`` nor a CUDA device)."""
    return not args.quick and not (args.gpu or _cuda())


def pick_budget(args: argparse.Namespace) -> Budget:
    """The budget ``budget_parser``'s options select: quick, GPU (also whenever CUDA is present) or CPU."""
    if args.quick:
        budget = Budget.quick()
    elif is_cpu_budget(args):
        budget = Budget()
    else:
        budget = Budget.gpu()
    overrides = {
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "eval_samples": args.eval_samples,
        "batch_size": args.batch_size,
        "eval_every": args.eval_every,
    }
    return dataclasses.replace(budget, **{k: v for k, v in overrides.items() if v is not None})


def seeds_of(args: argparse.Namespace) -> list[int]:
    """The seeds ``budget_parser``'s options select: ``--seeds`` of them from ``--first-seed``."""
    count = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    return list(range(args.first_seed, args.first_seed + count))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- tables ---------------------------------------------------------------------------------------------------


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_ms(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    mean, sd = mean_spread([v * scale for v in values])
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_curves(
    path: Path, title: str, curves: dict[str, list[list[float | None]]], ylabel: str = "held-out accuracy"
) -> None:
    """A metric per round (accuracy by default), one line per method (mean over seeds, shaded ± one standard
    deviation). A round some seed did not score (``None``) is left out; a line that skips rounds is dashed, so it
    is not read as measured in between."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, per_seed in curves.items():
        length = min(len(c) for c in per_seed)
        xs = [i for i in range(length) if all(c[i] is not None for c in per_seed)]
        means, sds = zip(*(mean_spread([c[i] for c in per_seed]) for i in xs), strict=True)  # type: ignore[misc]
        gaps = xs != list(range(xs[0], xs[-1] + 1))
        ax.plot(xs, means, marker="o", linestyle="--" if gaps else "-", label=label)
        if len(per_seed) > 1:
            ax.fill_between(
                xs,
                [m - s for m, s in zip(means, sds, strict=True)],
                [m + s for m, s in zip(means, sds, strict=True)],
                alpha=0.15,
            )
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> str:
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores, no GPU, {platform.machine()}, torch {torch.__version__}"


def command_line() -> str:
    """The command that produced a result, as it is written in the docs."""
    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def save_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1))
