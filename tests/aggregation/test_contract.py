"""The contract matrix: every registered strategy runs through the same checks on tiny tensors.

A new strategy needs one row in ``ROWS`` (its params, its parties and the global state it works on); the
matrix refuses a registered strategy without a row. Parties are simulated with the real party-side hooks:
merge into base, freeze what is not trainable, extra loss, gradient adjustment, two SGD steps,
``after_training``.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import pydantic
import pytest
import torch

from mpctf.aggregation import STRATEGIES, PartySpec, Strategy, StrategyParams
from mpctf.errors import UpdateRejected
from mpctf.messages import NamedTensors, Update

PARTIES = ["p0", "p1", "p2", "p3", "p4", "p5"]
LR, STEPS = 0.1, 2


def plain_state() -> NamedTensors:
    g = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(3, 2, generator=g),
        "layer.bias": torch.randn(3, generator=g).to(torch.bfloat16),
    }


def lora_state(rank: int) -> NamedTensors:
    g = torch.Generator().manual_seed(1)
    return {
        "q.lora_A.weight": torch.randn(rank, 4, generator=g),
        "q.lora_B.weight": torch.zeros(5, rank),
        "v.lora_A.weight": torch.randn(rank, 4, generator=g).to(torch.bfloat16),
        "v.lora_B.weight": torch.randn(3, rank, generator=g).to(torch.bfloat16),
        "head.weight": torch.randn(2, 3, generator=g),
    }


def specs(ranks: list[int], alpha: float = 4.0) -> dict[str, PartySpec]:
    return {p: PartySpec(lora_rank=r, lora_alpha=alpha) for p, r in zip(PARTIES, ranks, strict=True)}


HETERO = [1, 2, 2, 3, 3, 1]


@dataclass
class Row:
    params: dict[str, Any] = field(default_factory=dict)
    parties: dict[str, PartySpec] = field(default_factory=lambda: dict.fromkeys(PARTIES, PartySpec()))
    state: NamedTensors = field(default_factory=plain_state)
    #: Rank of the LoRA tensors after ``finalize`` when it differs from the input's (FLoRA's stack).
    out_rank: int | None = None


ROWS: dict[str, Row] = {
    "fedavg": Row(),
    "fedavgm": Row({"momentum": 0.5}),
    "fedprox": Row({"mu": 0.1}),
    "scaffold": Row(),
    "fedadagrad": Row(),
    "fedadam": Row(),
    "fedyogi": Row(),
    "dynamic": Row({"bandwidth_power": 0.5}),
    "median": Row(),
    "trimmed_mean": Row({"beta": 0.2}),
    "krum": Row({"f": 1}),
    "multikrum": Row({"f": 1, "m": 3}),
    "norm_bounded": Row({"max_norm": 0.5}),
    "fedit": Row(parties=specs([2] * 6), state=lora_state(2)),
    "ffa_lora": Row(parties=specs([2] * 6), state=lora_state(2)),
    "hetlora": Row(parties=specs(HETERO), state=lora_state(3)),
    "flexlora": Row(parties=specs(HETERO), state=lora_state(3)),
    "flora": Row(parties=specs(HETERO), state=lora_state(3), out_rank=sum(HETERO)),
}


def build(name: str) -> Strategy:
    row = ROWS[name]
    cls = STRATEGIES.get(name)
    strategy = cls(cls.Params(**row.params))
    strategy.configure_parties(row.parties)
    return strategy


@dataclass
class Task:
    state: NamedTensors
    instructions: dict[str, Any]
    payload: NamedTensors


def tasks(strategy: Strategy, round_num: int, global_state: NamedTensors) -> dict[str, Task]:
    strategy.begin_round(round_num, global_state)
    instructions, payload = strategy.party_instructions(), strategy.round_payload()
    return {p: Task(strategy.state_for_party(p, global_state), instructions, payload) for p in PARTIES}


def train_party(
    cls: type[Strategy], party: str, task: Task, party_state: dict[str, Any], round_num: int
) -> Update:
    """A miniature party trainer: SGD on ``½‖p − target‖²``, each hook called where the trainer calls it."""
    hooks = cls.party_hooks(task.instructions, task.payload, party, task.state, party_state)
    merged = hooks.merge_into_base()
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in merged)
    params = {k: torch.nn.Parameter(v.float().clone()) for k, v in task.state.items() if hooks.trainable(k)}
    g = torch.Generator().manual_seed(100 * PARTIES.index(party) + round_num)
    targets = {k: torch.randn(p.shape, generator=g) * 0.1 + p.detach() for k, p in params.items()}
    for _ in range(STEPS):
        loss = sum(0.5 * (p - targets[k]).pow(2).sum() for k, p in params.items())
        extra = hooks.extra_loss(params)
        if extra is not None:
            assert extra.dim() == 0 and extra.requires_grad
            loss = loss + extra
        for p in params.values():
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params.values():
                p -= LR * p.grad
            hooks.after_step(params, LR)
    local = {k: (params[k].detach() if k in params else v.float()) for k, v in task.state.items()}
    delta = {k: local[k] - task.state[k].float() for k in task.state}
    extra_tensors = hooks.after_training(local, task.state, STEPS, LR)
    index = PARTIES.index(party)
    metrics = {"loss": 1.0 + 0.25 * index, "bandwidth_bps": 1e6 * (index + 1)}
    return Update(
        party, round_num, delta, num_samples=10 + index, num_tokens=100, metrics=metrics, extra=extra_tensors
    )


def run_parties(cls: type[Strategy], round_tasks: dict[str, Task], states: dict[str, dict], round_num: int):
    return [train_party(cls, p, round_tasks[p], states[p], round_num) for p in PARTIES]


def aggregate(strategy: Strategy, updates: list[Update]) -> NamedTensors:
    for update in updates:
        strategy.accumulate(update)
    return strategy.finalize()


def lora_rank_of(state: NamedTensors) -> int | None:
    ranks = {v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight")}
    return ranks.pop() if ranks else None


def assert_same(a: NamedTensors, b: NamedTensors) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_every_registered_strategy_has_a_row() -> None:
    assert set(ROWS) == set(STRATEGIES.names())


@pytest.mark.parametrize("name", sorted(ROWS))
def test_rounds_keep_keys_shapes_dtypes_and_state_round_trips(name: str) -> None:
    cls, row = STRATEGIES.get(name), ROWS[name]
    strategy = build(name)
    states: dict[str, dict] = {p: {} for p in PARTIES}
    first = aggregate(strategy, run_parties(cls, tasks(strategy, 1, row.state), states, 1))

    assert first.keys() == row.state.keys()
    for k, v in first.items():
        assert v.dtype == row.state[k].dtype, k
        assert bool(torch.isfinite(v.float()).all()), k
        if k.endswith(".lora_A.weight") and row.out_rank is not None:
            assert v.shape == (row.out_rank, row.state[k].shape[1])
        elif k.endswith(".lora_B.weight") and row.out_rank is not None:
            assert v.shape == (row.state[k].shape[0], row.out_rank)
        else:
            assert v.shape == row.state[k].shape, k
    assert not torch.equal(
        first["layer.weight" if "layer.weight" in first else "head.weight"],
        row.state["layer.weight" if "layer.weight" in row.state else "head.weight"],
    )

    # A restored strategy sends the same tasks and produces the same next global state.
    restored = build(name)
    restored.load_state_dict(copy.deepcopy(strategy.state_dict()))
    tasks_a, tasks_b = tasks(strategy, 2, first), tasks(restored, 2, first)
    for p in PARTIES:
        assert_same(tasks_a[p].state, tasks_b[p].state)
        assert_same(tasks_a[p].payload, tasks_b[p].payload)
        assert tasks_a[p].instructions == tasks_b[p].instructions
    updates = run_parties(cls, tasks_a, states, 2)
    assert_same(aggregate(strategy, updates), aggregate(restored, updates))


@pytest.mark.parametrize("name", sorted(ROWS))
def test_state_of_another_strategy_is_refused_naming_both(name: str) -> None:
    other = "fedadam" if name != "fedadam" else "fedyogi"
    foreign = build(other).state_dict()
    with pytest.raises(ValueError, match=rf"'{other}'.*'{name}'"):
        build(name).load_state_dict(foreign)


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("corruption", ["nan", "shape", "missing"])
def test_rejected_update_leaves_no_trace(name: str, corruption: str) -> None:
    cls, row = STRATEGIES.get(name), ROWS[name]
    clean, dirty = build(name), build(name)
    states: dict[str, dict] = {p: {} for p in PARTIES}
    round_tasks = tasks(clean, 1, row.state)
    tasks(dirty, 1, row.state)
    updates = run_parties(cls, round_tasks, states, 1)
    bad = copy.copy(updates[0])
    key = next(iter(bad.tensors))
    tensors = dict(bad.tensors)
    if corruption == "nan":
        tensors[key] = torch.full_like(tensors[key], float("nan"))
    elif corruption == "shape":
        tensors[key] = torch.zeros(7)
    else:
        del tensors[key]
    bad.tensors = tensors
    with pytest.raises(UpdateRejected, match="party 'p0'"):
        dirty.accumulate(bad)
    assert_same(aggregate(dirty, updates[1:]), aggregate(clean, updates[1:]))


@pytest.mark.parametrize("name", sorted(ROWS))
def test_docstring_has_paper_update_rule_and_exchange(name: str) -> None:
    doc = sys.modules[STRATEGIES.get(name).__module__].__doc__ or ""
    assert re.search(r"\([^()]*\b(19|20)\d\d, \"[^\"]+\"", doc), 'paper reference: (Authors, Year, "Title")'
    assert "Update rule" in doc
    assert "Exchanged" in doc


@pytest.mark.parametrize("name", sorted(ROWS))
def test_params_are_frozen_and_refuse_unknown_keys(name: str) -> None:
    cls = STRATEGIES.get(name)
    assert issubclass(cls.Params, StrategyParams)
    with pytest.raises(pydantic.ValidationError, match="not_a_knob"):
        cls.Params(**ROWS[name].params, not_a_knob=1)
    params = cls.Params(**ROWS[name].params)
    with pytest.raises(pydantic.ValidationError):
        params.__setattr__(next(iter(cls.Params.model_fields), "x"), 0)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_rank_of_party_state_matches_its_spec(name: str) -> None:
    row, strategy = ROWS[name], build(name)
    strategy.begin_round(1, row.state)
    for party, spec in row.parties.items():
        sent = strategy.state_for_party(party, row.state)
        assert lora_rank_of(sent) == spec.lora_rank
