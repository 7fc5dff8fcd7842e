"""The attacks of the privacy-audit benchmark, run on finished runs' checkpoints and captured updates.

- :func:`row_losses`: each row's answer negative log-likelihood under a run's final global model (what the
  membership tests score).
- :func:`membership`: loss-threshold and offline-LiRA AUC and TPR at 1 % FPR, row by row and party by party.
- :func:`label_references` / :func:`label_inference`: the curious server's label-share attack on the updates it
  saw (captured by the ``capture_`` strategy wrapper below).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpctf.aggregation import STRATEGIES
from mpctf.messages import NamedTensors, Update

#: Where the capturing strategy writes the first round's updates (set by the parent before a forked run starts).
CAPTURE_DIR: Path | None = None


def capturing(name: str) -> str:
    """Register ``capture_<name>``: strategy ``name`` that also saves every update it is handed in round 1 (the
    server's view: each party's update in the clear, the hidden sum's mean under secure aggregation)."""
    capture_name = f"capture_{name}"
    if capture_name in STRATEGIES:
        return capture_name
    base = STRATEGIES.get(name)

    class Capture(base):  # type: ignore[misc, valid-type]
        def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
            super().begin_round(round_num, global_state)
            self._capture_round = round_num

        def accumulate(self, update: Update) -> None:
            if CAPTURE_DIR is not None and self._capture_round == 1:
                CAPTURE_DIR.mkdir(parents=True, exist_ok=True)
                tensors = {k: v.detach().float().clone() for k, v in update.tensors.items()}
                torch.save(tensors, CAPTURE_DIR / f"{update.party}.pt")
            super().accumulate(update)

    STRATEGIES.register(capture_name)(Capture)
    return capture_name


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _loaded(run_dir: Path) -> tuple[Any, Any]:
    """The run's model (its initial trainable state, from the run's seed) and task."""
    from mpctf.data.tasks import make_task
    from mpctf.export import run_config
    from mpctf.model.bundle import ModelBundle

    config = run_config(run_dir / "config.yaml")
    bundle = ModelBundle.load(config)
    return bundle, make_task(config, bundle.tokenizer)


def row_losses(run_dir: Path, files: dict[str, Path]) -> dict[str, list[float]]:
    """Each file's rows' summed answer NLL under the run's last global state."""
    from mpctf.server.checkpoint import load_latest

    bundle, task = _loaded(run_dir)
    checkpoint = load_latest(run_dir)
    assert checkpoint is not None, f"{run_dir}: no checkpoint"
    bundle.mode.set_state(bundle.model, checkpoint.global_state)
    out = {}
    for name, path in files.items():
        examples = task.encode_all(_rows(path), str(path))
        scored = task.row_nll(bundle.model, examples, batch_size=32, device=bundle.device)
        out[name] = [total for total, _ in scored]
    return out


def membership(
    target: dict[str, list[float]], references: list[dict[str, list[float]]], members: list[str], others: str
) -> dict[str, float]:
    """AUC and TPR at 1 % FPR of both attacks, at row level (every member row against every ``others`` row) and
    at party level (each member party's mean score against equal-sized groups of ``others`` rows)."""
    from mpctf.privacy.membership import (
        lira_offline_scores,
        logit_confidence,
        loss_threshold_scores,
        party_scores,
        roc_auc,
        tpr_at_fpr,
    )

    names = [*members, others]
    nll = np.concatenate([target[n] for n in names])
    owners = [n for n in names for _ in target[n]]
    scores = {"loss": loss_threshold_scores(nll)}
    if len(references) >= 2:
        ref = np.stack([logit_confidence(np.concatenate([r[n] for n in names])) for r in references])
        scores["lira"] = lira_offline_scores(logit_confidence(nll), ref)
    is_member = np.array([o != others for o in owners])
    out: dict[str, float] = {}
    size = len(target[members[0]])
    # Non-member "parties": the held-out rows dealt into groups as large as a party.
    groups = list(owners)
    for j, i in enumerate(i for i, o in enumerate(owners) if o == others):
        groups[i] = f"{others}{j // size}"
    for attack, s in scores.items():
        out[f"{attack}_auc"] = roc_auc(s[is_member], s[~is_member])
        out[f"{attack}_tpr_at_1pct_fpr"] = tpr_at_fpr(s[is_member], s[~is_member], 0.01)
        by_party = party_scores(list(s), groups)
        inside = [v for g, v in by_party.items() if g in members]
        outside = [v for g, v in by_party.items() if g not in members]
        out[f"{attack}_party_auc"] = roc_auc(inside, outside)
    return out


def label_references(run_dir: Path, aux: dict[str, Path], settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """One reference update per label: the parties' recipe from the run's initial global state (round 1's) on
    public rows of that label alone."""
    from mpctf.aggregation.base import PartyHooks
    from mpctf.party.trainer import TrainSettings, train_round
    from mpctf.privacy.label_inference import flatten

    bundle, task = _loaded(run_dir)
    start = {k: v.clone() for k, v in bundle.mode.get_state(bundle.model).items()}
    out = {}
    for label, path in aux.items():
        bundle.mode.set_state(bundle.model, start)
        examples = task.encode_all(_rows(path), str(path))
        train_round(bundle, task, examples, TrainSettings(**settings), PartyHooks())
        local = bundle.mode.get_state(bundle.model)
        out[label] = flatten({k: local[k].float() - start[k].float() for k in start})
    return out


def label_inference(
    captured: Path, references: dict[str, np.ndarray], truth: dict[str, float], label: str
) -> dict[str, Any]:
    """The attack on every update the server saw in round 1: the estimated share of ``label`` against each
    party's true share (``truth``); under secure aggregation the server saw one mean, whose estimate is then its
    only guess for every party."""
    from mpctf.privacy.label_inference import flatten, infer_label_shares

    labels = list(references)
    seen = {p.stem: flatten(torch.load(p)) for p in sorted(captured.glob("*.pt"))}
    estimates = {
        who: float(infer_label_shares(vec, [references[c] for c in labels])[labels.index(label)])
        for who, vec in seen.items()
    }
    # Each party's own estimate where its update was seen; the hidden sum's estimate stands for every party.
    guess = {p: estimates.get(p, estimates.get("(aggregate)", 0.5)) for p in truth}
    errors = [abs(guess[p] - truth[p]) for p in truth]
    return {
        "updates_seen": len(seen),
        "estimates": estimates,
        "guess_per_party": guess,
        "mean_abs_error": float(np.mean(errors)),
        "prior_mean_abs_error": float(np.mean([abs(0.5 - t) for t in truth.values()])),
    }
