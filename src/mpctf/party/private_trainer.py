"""The local round with sample-level DP-SGD (Opacus): per-example clipping and noise on the LoRA gradients.

Same contract as :func:`mpctf.party.trainer.train_round`, different mechanics, because DP-SGD's guarantee
needs them: batches are Poisson-sampled from the round's chunk (rate ``batch / len(chunk)``), the loss is a
per-sequence mean (:func:`~mpctf.privacy.dpsgd.sequence_mean_lm_loss`, so one example's gradient does not
depend on the others' lengths), a whole logical batch is one forward/backward (no gradient accumulation:
Opacus clips per example over the whole batch), and the party's Opacus ledger is carried from round to round
so ε keeps growing.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from mpctf.aggregation.base import PartyHooks
from mpctf.data.task_base import scored_logits
from mpctf.data.tasks import Example, Task
from mpctf.model.bundle import ModelBundle
from mpctf.party.trainer import (
    OptimizerMemory,
    TrainSettings,
    TrainStats,
    add_extra_loss_gradient,
    local_optimizer,
)
from mpctf.privacy.config import SampleDpConfig


@dataclass
class DpSgdLedger:
    """What a party keeps between rounds: Opacus's accountant history."""

    state: dict[str, Any] | None = None
    steps: int = 0
    history: list[float] = field(default_factory=list)


def train_round_private(
    bundle: ModelBundle,
    task: Task,
    examples: Sequence[Example],
    settings: TrainSettings,
    hooks: PartyHooks,
    config: SampleDpConfig,
    ledger: DpSgdLedger,
    memory: OptimizerMemory | None = None,
) -> tuple[TrainStats, float]:
    """Train one round with DP-SGD; returns the stats and the party's ε at ``config.delta`` after it. A kept
    optimizer state (``memory``) holds only noised, clipped gradients' statistics: post-processing, no ε."""
    from mpctf.privacy.dpsgd import make_private, sequence_mean_lm_loss

    model, device = bundle.model, bundle.device
    params = bundle.mode.trainable_parameters(model)
    stepped_keys = [key for key in params if hooks.trainable(key)]
    stepped = [params[key] for key in stepped_keys]
    optimizer = local_optimizer(stepped, settings)
    if memory is not None:
        memory.restore(optimizer, stepped_keys)
    batch_size = min(settings.micro_batch * settings.grad_accum, len(examples))
    loader = DataLoader(TensorDataset(torch.arange(len(examples))), batch_size=batch_size)
    torch.manual_seed(settings.seed)
    model.train()  # Opacus refuses a model in eval mode (the server's evaluation may have left it there)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # Opacus warns that secure_mode is off (documented in docs/privacy.md)
        private = make_private(
            model,
            optimizer,
            loader,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            accountant=config.accountant,
            accountant_state=ledger.state,
            grad_sample_mode=config.grad_sample_mode,
        )
    start = time.perf_counter()
    loss_sum, samples, tokens, steps = 0.0, 0, 0, 0
    try:
        for (indices,) in private.data_loader:
            if settings.max_steps is not None and steps >= settings.max_steps:
                break
            steps += 1
            private.optimizer.zero_grad(set_to_none=True)
            if len(indices) > 0:
                batch = task.collate([examples[int(i)] for i in indices]).to(device)
                logits, targets, _ = scored_logits(private.model, batch)
                loss = sequence_mean_lm_loss(logits, targets)
                loss.backward()
                loss_sum += float(loss.detach()) * len(indices)
                samples += len(indices)
                tokens += batch.num_tokens
            private.step(
                empty_batch=len(indices) == 0,
                add_public_gradient=lambda: add_extra_loss_gradient(hooks.extra_loss(params), stepped),
            )
            with torch.no_grad():
                hooks.after_step(params, settings.lr)
        epsilon = private.epsilon(config.delta)
        ledger.state = private.accountant_state()
        if memory is not None:
            memory.save(optimizer, stepped_keys)
    finally:
        private.optimizer.zero_grad(set_to_none=True)
        private.release()
        model.eval()
    ledger.steps += steps
    ledger.history.append(epsilon)
    stats = TrainStats(
        loss=loss_sum / max(samples, 1),
        samples=max(samples, 1),  # an all-empty Poisson round still released a (noise-only) update
        tokens=tokens,
        steps=steps,
        seconds=time.perf_counter() - start,
    )
    return stats, epsilon
