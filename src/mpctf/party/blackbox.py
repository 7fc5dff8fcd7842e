"""A party's round of black-box prompt tuning: CMA-ES over ``z``, forward passes only (FedBPT's local step).

The party restarts CMA-ES every round at the global ``z`` with step size ``sigma`` and runs ``generations``
generations. Each asks ``popsize`` candidates and scores every one by the mean answer negative log-likelihood of
one batch of the round's chunk (the batches walk the chunk in a seeded order, so a round sees
``generations × batch`` rows); the scores go back to CMA-ES. The party's new ``z`` is the search distribution's
mean, and the update the server averages is ``z_local − z_global``: ``dim`` floats.

The model is reached only through :class:`ForwardModel` (virtual-token embeddings and token ids in, each row's
answer log-likelihood out), so a party whose model sits behind an inference server that accepts prompt
embeddings swaps :class:`LocalForwardModel` for a client of it. No backward pass runs and no optimizer state
exists: the party's memory is inference memory. CMA-ES is Hansen's ``cma`` package.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Protocol

import torch

from mpctf.config import BlackBoxPromptConfig
from mpctf.data.tasks import Example, Task
from mpctf.model.bundle import ModelBundle
from mpctf.party.trainer import TrainSettings, TrainStats


class ForwardModel(Protocol):
    """The one call a black-box party makes to its model."""

    def answer_nll(self, prompt: torch.Tensor, examples: Sequence[Example]) -> list[tuple[float, int]]:
        """``(summed answer negative log-likelihood, answer tokens)`` of each example with the virtual-token
        embeddings ``prompt`` (``num_virtual_tokens × hidden``) before its tokens."""
        ...


class LocalForwardModel:
    """:class:`ForwardModel` on the party's own loaded model."""

    def __init__(self, bundle: ModelBundle, task: Task, batch_size: int) -> None:
        self.bundle, self.task, self.batch_size = bundle, task, batch_size

    def answer_nll(self, prompt: torch.Tensor, examples: Sequence[Example]) -> list[tuple[float, int]]:
        self.bundle.mode.write_prompt(self.bundle.model, prompt)  # type: ignore[attr-defined]
        return self.task.row_nll(
            self.bundle.model, examples, batch_size=self.batch_size, device=self.bundle.device
        )


def train_round_blackbox(
    bundle: ModelBundle,
    task: Task,
    examples: Sequence[Example],
    settings: TrainSettings,
    params: BlackBoxPromptConfig,
    model: ForwardModel | None = None,
) -> TrainStats:
    """Search ``z`` from the bundle's current (global) state on ``examples``; leaves the bundle at the new ``z``."""
    import cma

    mode = bundle.mode
    batch = min(settings.micro_batch * settings.grad_accum, len(examples))
    model = model or LocalForwardModel(bundle, task, batch)
    start_z = mode.get_state(bundle.model)["z"]
    order = list(range(len(examples)))
    random.Random(settings.seed).shuffle(order)
    search = cma.CMAEvolutionStrategy(
        start_z.double().numpy(),
        params.sigma,
        {"popsize": params.popsize, "seed": settings.seed % (2**31 - 2) + 1, "verbose": -9},
    )
    began = time.perf_counter()
    tokens, last = 0, [float("nan")]
    for generation in range(params.generations):
        rows = [examples[order[(generation * batch + i) % len(order)]] for i in range(batch)]
        candidates = search.ask()
        last = []
        for candidate in candidates:
            scored = model.answer_nll(mode.prompt(torch.from_numpy(candidate)), rows)  # type: ignore[attr-defined]
            last.append(sum(s for s, _ in scored) / max(sum(c for _, c in scored), 1))
            tokens += sum(len(e.input_ids) for e in rows)
        search.tell(candidates, last)
    mode.set_state(bundle.model, {"z": torch.from_numpy(search.result.xfavorite).float()})
    return TrainStats(
        loss=sum(last) / len(last),
        samples=min(len(examples), params.generations * batch),
        tokens=tokens,
        steps=params.generations,
        seconds=time.perf_counter() - began,
    )
