"""What scoring only the answer positions saves, in evaluation and in a training step.

    python benchmarks/evaluation.py                     # SmolLM2-135M-Instruct + LoRA, 128 held-out reviews
    python benchmarks/evaluation.py --model tiny-llama --samples 64

A classification prompt is ~40 tokens and its answer one; the plain way (every position through the LM head,
batches in data order) is timed against the task's own path (``scored_logits``: the head only from the first
position that predicts a labelled token; evaluation batches sorted by length). Both give the same accuracy and
loss, which the script checks. Best of ``--repeats`` timings each, so a busy machine inflates both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _harness import Budget, base_config, machine

from mpctf.config import load_config
from mpctf.data.federated import FederatedData
from mpctf.data.task_base import answer_loss, next_token_pairs, token_logits
from mpctf.data.tasks import ClassificationTask, make_task, verbalizer_predictions
from mpctf.model.bundle import ModelBundle


@torch.no_grad()
def plain_evaluate(model: torch.nn.Module, task: ClassificationTask, examples: list, batch_size: int) -> dict:
    """Accuracy and answer loss with the logits of every position, batches in data order."""
    correct, loss_sum = 0, 0.0
    for i in range(0, len(examples), batch_size):
        batch = task.collate(examples[i : i + batch_size])
        logits = token_logits(model, batch)
        correct += int(
            (verbalizer_predictions(logits, batch.prompt_end, task.first_answer_ids) == batch.label).sum()
        )
        loss_sum += float(answer_loss(*next_token_pairs(logits, batch.labels))) * batch.input_ids.size(0)
    return {"accuracy": correct / len(examples), "eval_loss": loss_sum / len(examples)}


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--samples", type=int, default=128, help="held-out reviews scored")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    budget = Budget(model=args.model, eval_samples=args.samples)
    cfg = load_config(
        base_config(budget, name="eval", seed=0, num_parties=1, split="iid", out=Path("unused"))
    )
    bundle = ModelBundle.load(cfg)
    task = make_task(cfg, bundle.tokenizer)
    assert isinstance(task, ClassificationTask)
    examples = task.encode_all(FederatedData(cfg).eval_rows(), "held-out reviews")
    model = bundle.model
    model.eval()
    plain_s, plain = best_of(args.repeats, lambda: plain_evaluate(model, task, examples, 32))
    ours_s, ours = best_of(
        args.repeats, lambda: task.evaluate(model, examples, batch_size=32, device=bundle.device)
    )
    assert plain["accuracy"] == ours["accuracy"] and abs(plain["eval_loss"] - ours["eval_loss"]) < 1e-4, (
        plain,
        ours,
    )

    model.train()
    batch = task.collate(examples[: args.batch_size])

    def step(loss_of: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            loss_of().backward()
            model.zero_grad(set_to_none=True)

        return run

    plain_step, _ = best_of(
        args.repeats, step(lambda: answer_loss(*next_token_pairs(token_logits(model, batch), batch.labels)))
    )
    ours_step, _ = best_of(args.repeats, step(lambda: task.loss(model, batch)))
    tokens = sum(len(e.input_ids) for e in examples) / len(examples)
    print(f"machine: {machine()}; model {args.model}, LoRA r={budget.lora_r} on q_proj/v_proj")
    print(
        f"held-out reviews: {len(examples)}, mean {tokens:.1f} tokens; accuracy {ours['accuracy']:.4f} both ways"
    )
    print(
        f"evaluation: every position {plain_s:.2f} s, answer positions only {ours_s:.2f} s ({plain_s / ours_s:.2f}x)"
    )
    print(
        f"training step (forward + backward, batch {args.batch_size}): every position {plain_step:.2f} s, "
        f"answer positions only {ours_step:.2f} s ({plain_step / ours_step:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
