"""The local training loop of one round: plain PyTorch, so its throughput matches a hand-written loop."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mpctf.aggregation.base import PartyHooks
from mpctf.data.tasks import Example, Task
from mpctf.model.bundle import ModelBundle
from mpctf.party.distributed import Shard


@dataclass
class TrainStats:
    loss: float
    samples: int
    tokens: int
    steps: int
    seconds: float


@dataclass
class TrainSettings:
    lr: float
    weight_decay: float
    micro_batch: int
    grad_accum: int
    max_steps: int | None
    seed: int
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.0  # SGD's only


def local_optimizer(params: Sequence[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """A fresh optimizer for one round: its state belongs to the previous global state, and server-side
    momentum is the strategies' job."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


@dataclass
class OptimizerMemory:
    """A party's local optimizer state carried from one round into the next (``training.optimizer_state:
    keep``). It is restored only onto the same trainable tensors it was saved from."""

    keys: list[str] | None = None
    state: dict[str, Any] | None = None

    def restore(self, optimizer: torch.optim.Optimizer, keys: list[str]) -> None:
        if self.state is not None and self.keys == keys:
            optimizer.load_state_dict(self.state)

    def save(self, optimizer: torch.optim.Optimizer, keys: list[str]) -> None:
        # The optimizer is dropped after the round, so its state needs no copy.
        self.keys, self.state = keys, optimizer.state_dict()


def add_extra_loss_gradient(extra: torch.Tensor | None, params: Sequence[torch.nn.Parameter]) -> None:
    """Add the gradient of an algorithm's term on the parameters alone (FedProx's proximal term) to ``params``.

    It is taken once per step, outside the data-parallel wrapper: the term does not depend on the data, so every
    rank computes the same gradient for the tensors it holds and none is averaged. Under FSDP the term is a
    sharded sum whose local part involves only this rank's slices, which is what its gradient needs.
    """
    if extra is None:
        return
    from torch.distributed.tensor import DTensor

    local = extra.to_local() if isinstance(extra, DTensor) else extra
    grads = torch.autograd.grad(local, list(params), allow_unused=True)
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


def train_round(
    bundle: ModelBundle,
    task: Task,
    examples: Sequence[Example],
    settings: TrainSettings,
    hooks: PartyHooks,
    *,
    shard: Shard | None = None,
    memory: OptimizerMemory | None = None,
) -> TrainStats:
    """Train on ``examples`` in the given order: micro-batches, gradient accumulation, a fresh
    :func:`local_optimizer` per round (holding the previous round's state when ``memory`` keeps it). With a
    ``shard`` (a party trained by several processes) this process trains its share of every step and gradients
    are averaged over the processes; the statistics cover all of them.
    """
    shard = shard or Shard()
    device = bundle.device
    model = shard.wrap(bundle.model)
    params = bundle.mode.trainable_parameters(bundle.model)
    # An algorithm may freeze part of the exchanged state at the party (FFA-LoRA keeps lora_A fixed).
    stepped_keys = [key for key in params if hooks.trainable(key)]
    stepped = [params[key] for key in stepped_keys]
    optimizer = local_optimizer(stepped, settings)
    if memory is not None:
        memory.restore(optimizer, stepped_keys)
    per_step = settings.micro_batch * settings.grad_accum
    steps = math.ceil(len(examples) / per_step)
    if settings.max_steps is not None:
        steps = min(steps, settings.max_steps)
    model.train()
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    loss_sum, samples, tokens = 0.0, 0, 0
    for step in range(steps):
        step_examples = examples[step * per_step : (step + 1) * per_step]
        optimizer.zero_grad(set_to_none=True)
        mine, factor = shard.split(step_examples)
        micro = [mine[i : i + settings.micro_batch] for i in range(0, len(mine), settings.micro_batch)]
        for n, chunk in enumerate(micro):
            with shard.micro_context(model, last=n == len(micro) - 1):
                batch = task.collate(chunk).to(device)
                loss = task.loss(model, batch)
                # Weight each micro-batch by its share of the step so accumulation equals one big batch.
                (loss * (len(chunk) / len(step_examples) * factor)).backward()
            if factor:
                loss_sum += float(loss.detach()) * len(chunk)
                samples += len(chunk)
                tokens += batch.num_tokens
        add_extra_loss_gradient(hooks.extra_loss(params), stepped)
        optimizer.step()
        with torch.no_grad():
            hooks.after_step(params, settings.lr)
    model.eval()
    if memory is not None:
        memory.save(optimizer, stepped_keys)
    loss_sum, samples, tokens = shard.total([loss_sum, samples, tokens])
    return TrainStats(
        loss=loss_sum / max(samples, 1),
        samples=int(samples),
        tokens=int(tokens),
        steps=steps,
        seconds=time.perf_counter() - start,
    )
