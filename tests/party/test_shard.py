"""How a step's examples are shared among a party's processes (pure bookkeeping, no processes started)."""

from __future__ import annotations

import torch

from mpctf.data.tasks import Example
from mpctf.party.distributed import RankShard, Shard


def _examples(n: int) -> list[Example]:
    return [Example(input_ids=[i, i + 1], prompt_len=1) for i in range(n)]


def _shards(world: int) -> list[RankShard]:
    return [RankShard(None, rank, world, torch.device("cpu")) for rank in range(world)]  # type: ignore[arg-type]


def test_ranks_cover_a_step_in_contiguous_disjoint_shards() -> None:
    step = _examples(7)
    parts = [shard.split(step) for shard in _shards(3)]
    assert [e for examples, _ in parts for e in examples] == step
    assert [len(examples) for examples, _ in parts] == [2, 2, 3]
    # Each loss is scaled by the world size, which DDP's averaging divides out again.
    assert all(factor == 3.0 for _, factor in parts)


def test_a_rank_without_examples_runs_a_stand_in_of_weight_zero() -> None:
    step = _examples(1)
    (stand_in, weight0), (real, weight1) = (shard.split(step) for shard in _shards(2))
    # Rank 0's share of a one-example step is empty: it still joins the gradient all-reduce, contributing zero.
    assert (list(stand_in), weight0) == (step, 0.0)
    assert (list(real), weight1) == (step, 2.0)


def test_the_single_process_shard_is_the_whole_step() -> None:
    step = _examples(5)
    examples, factor = Shard().split(step)
    assert list(examples) == step and factor == 1.0
    assert Shard().total([1.5, 5, 7]) == [1.5, 5, 7]


def test_an_algorithm_term_adds_its_gradient_once_per_step() -> None:
    """FedProx's term ``μ/2 ‖p − x‖²`` on p = (1, 3), x = (0, 1), μ = 0.5: its gradient μ(p − x) = (0.5, 1) is
    added to the data gradient already there, and to a parameter the data left without one."""
    from mpctf.aggregation.fedprox import ProximalHooks
    from mpctf.party.trainer import add_extra_loss_gradient

    p = torch.nn.Parameter(torch.tensor([1.0, 3.0]))
    q = torch.nn.Parameter(torch.tensor([2.0]))
    p.grad = torch.tensor([10.0, 20.0])
    hooks = ProximalHooks(0.5, {"p": torch.tensor([0.0, 1.0]), "q": torch.tensor([0.0])})
    add_extra_loss_gradient(hooks.extra_loss({"p": p, "q": q}), [p, q])
    assert p.grad.tolist() == [10.5, 21.0]
    assert q.grad is not None and q.grad.tolist() == [1.0]
    add_extra_loss_gradient(None, [p, q])
    assert p.grad.tolist() == [10.5, 21.0]


def test_the_local_optimizer_steps_by_its_rule() -> None:
    """g = 2 on p = 1, lr 0.1. SGD with momentum 0.5: buffer 2 → p 0.8, then buffer 0.5·2 + 2 = 3 → p 0.5.
    AdamW's first step is lr · g / |g| whatever the gradient's size: p 0.9."""
    from dataclasses import replace

    from mpctf.party.trainer import TrainSettings, local_optimizer

    def two_steps(**kind: object) -> list[float]:
        p = torch.nn.Parameter(torch.tensor([1.0]))
        settings = TrainSettings(
            lr=0.1, weight_decay=0.0, micro_batch=1, grad_accum=1, max_steps=None, seed=0
        )
        optimizer = local_optimizer([p], replace(settings, **kind))
        seen = []
        for _ in range(2):
            p.grad = torch.tensor([2.0])
            optimizer.step()
            seen.append(round(p.item(), 6))
        return seen

    assert two_steps(optimizer="sgd", momentum=0.5) == [0.8, 0.5]
    assert two_steps(optimizer="sgd") == [0.8, 0.6]
    assert two_steps()[0] == 0.9
