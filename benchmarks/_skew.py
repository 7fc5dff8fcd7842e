"""Label-skewed silos for the robustness benchmark: tasks, their data, and a probe of the party updates.

Each task is a public text-classification data set that ships inside an installable package (see
``mpctf.data.sources.BUILTINS``). A silo setting deals ``rows_per_party`` training rows to each party with a
given share of the task's ``skew_label`` (the other labels share the rest evenly), from groups disjoint from a
label-balanced test set. The rows are written as JSON Lines files that the configs name as each party's own
data, so every method (federated, each party alone, pooled) trains on exactly the same rows.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mpctf.aggregation import STRATEGIES
from mpctf.messages import NamedTensors, Update


@dataclass(frozen=True)
class SkewTask:
    """A classification task; with ``group_by``, test groups (movies) are disjoint from training groups."""

    builtin: str
    prompt: str
    text_field: str
    label_field: str
    labels: dict[str, str]
    group_by: str | None
    skew_label: str
    #: Rows per party in the skewed setting: as many as the task's scarcest label allows at shares 10-70 %.
    rows_per_party: int
    #: Held-out rows per label (a balanced test set).
    test_per_label: int = 100

    def task_section(self) -> dict[str, Any]:
        return {
            "type": "classification",
            "prompt": self.prompt,
            "text_field": self.text_field,
            "label_field": self.label_field,
            "labels": dict(self.labels),
        }


def _rows(task: SkewTask) -> list[dict[str, Any]]:
    from mpctf.data.sources import BUILTINS

    rows = BUILTINS[task.builtin]()
    # A row without a group is a group of its own (held out row by row).
    return [
        {**r, "_group": r[task.group_by] if task.group_by else str(i)}
        for i, r in enumerate(rows)
        if r[task.label_field] in task.labels
    ]


def label_shares(skew_share: float, labels: Sequence[str], skew_label: str) -> dict[str, float]:
    """``skew_share`` of ``skew_label``; the other labels split the rest evenly."""
    others = [label for label in labels if label != skew_label]
    return {skew_label: skew_share, **{label: (1 - skew_share) / len(others) for label in others}}


def write_silos(
    task: SkewTask,
    shares: Sequence[float],
    rows_per_party: int,
    test_per_label: int,
    seed: int,
    folder: Path,
) -> dict[str, Any]:
    """Write ``party<i>.jsonl`` (``shares[i]`` of the skew label) and ``test.jsonl`` (balanced) into ``folder``.

    Returns the counts per party and label, for the benchmark's record."""
    rng = random.Random(f"silos:{seed}")
    rows = _rows(task)
    groups = sorted({r["_group"] for r in rows})
    rng.shuffle(groups)
    test_groups: set[str] = set()
    by_label: dict[str, int] = dict.fromkeys(task.labels, 0)
    per_group: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        per_group.setdefault(r["_group"], []).append(r)
    for g in groups:  # whole groups go to the test side until every label has enough rows there
        if min(by_label.values()) >= test_per_label:
            break
        test_groups.add(g)
        for r in per_group[g]:
            by_label[r[task.label_field]] += 1
    test = [r for r in rows if r["_group"] in test_groups]
    test_rows = list(
        itertools.chain.from_iterable(
            rng.sample([r for r in test if r[task.label_field] == label], test_per_label)
            for label in task.labels
        )
    )
    pool = {
        label: [r for r in rows if r["_group"] not in test_groups and r[task.label_field] == label]
        for label in task.labels
    }
    for label_rows in pool.values():
        rng.shuffle(label_rows)
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for i, share in enumerate(shares):
        wanted = label_shares(share, list(task.labels), task.skew_label)
        party: list[dict[str, Any]] = []
        for label, fraction in wanted.items():
            n = round(rows_per_party * fraction)
            if len(pool[label]) < n:
                raise SystemExit(
                    f"{task.builtin}: not enough {label!r} rows for party {i} ({len(pool[label])})"
                )
            party += [pool[label].pop() for _ in range(n)]
        rng.shuffle(party)
        _write_jsonl(folder / f"party{i}.jsonl", party)
        counts[f"party{i}"] = {
            label: sum(r[task.label_field] == label for r in party) for label in task.labels
        }
    _write_jsonl(folder / "test.jsonl", test_rows)
    return {"parties": counts, "test_rows": len(test_rows)}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "_group"}) + "\n" for r in rows))


# --- the probe: what each party's update looks like ------------------------------------------------------------

#: Where the probe writes its records (set by the parent before the forked run starts).
PROBE_FILE: Path | None = None


def probed(name: str) -> str:
    """Register ``probe_<name>``: strategy ``name`` that also writes, per round, each party's update norm, the
    cosine between every two parties' updates, and each update's cosine with the round's mean update."""
    probe_name = f"probe_{name}"
    if probe_name in STRATEGIES:
        return probe_name
    base = STRATEGIES.get(name)

    class Probe(base):  # type: ignore[misc, valid-type]
        def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
            super().begin_round(round_num, global_state)
            self._probe_round, self._probe = round_num, {}

        def accumulate(self, update: Update) -> None:
            flat = torch.cat([t.detach().flatten().float() for t in update.tensors.values()])
            self._probe[update.party] = (flat.clone(), float(update.num_samples))
            super().accumulate(update)

        def finalize(self) -> NamedTensors:
            if PROBE_FILE is not None:
                with PROBE_FILE.open("a") as fh:
                    fh.write(json.dumps(probe_record(self._probe_round, self._probe)) + "\n")
            return super().finalize()

    STRATEGIES.register(probe_name)(Probe)
    return probe_name


def probe_record(round_num: int, updates: dict[str, tuple[torch.Tensor, float]]) -> dict[str, Any]:
    """Norms and cosines of one round's party updates (``updates``: party → (flat delta, weight))."""
    names = sorted(updates)
    total = sum(w for _, w in updates.values())
    mean = sum(updates[p][0] * (updates[p][1] / total) for p in names)
    cos = torch.nn.functional.cosine_similarity
    pairs = {
        f"{a}|{b}": float(cos(updates[a][0], updates[b][0], dim=0))
        for a, b in itertools.combinations(names, 2)
    }
    return {
        "round": round_num,
        "norms": {p: float(updates[p][0].norm()) for p in names},
        "mean_norm": float(mean.norm()),  # type: ignore[union-attr]
        "cos_pairs": pairs,
        "cos_to_mean": {p: float(cos(updates[p][0], mean, dim=0)) for p in names},
    }
