"""Membership inference: the attack scores and the figures that say how well they tell members from the rest.

Two attacks on a trained model, both on one number per row (its summed answer negative log-likelihood):

- **Loss threshold** (Yeom, Giannakis, Fredrikson, Jha, CSF 2018): a row whose loss is low was probably trained
  on; the score is ``−loss``.
- **Offline LiRA** (Carlini, Chien, Nasr, Song, Terzis, Tramèr, S&P 2022): reference models trained like the
  target but never on the row give the row's "out" distribution of the logit-scaled confidence
  ``φ = ln p − ln(1 − p)``; the score is ``Φ((φ − μ_out)/σ)``, how far into its own out-distribution the target's
  confidence lies. With few reference models one global ``σ`` (their spread pooled over all rows) is steadier
  than per-row ones (the paper's "fixed variance").

A party-level membership test (did this party take part?) scores a party by the mean of its rows' scores.

The figures: ROC AUC (the Mann-Whitney statistic) and the true-positive rate at a low false-positive rate, the
paper's headline number. Written here (a few lines of NumPy) rather than pulling in scikit-learn for one curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def logit_confidence(nll: Sequence[float]) -> np.ndarray:
    """``φ = ln p − ln(1 − p)`` per row, with ``p = exp(−nll)`` the model's probability of the row's whole
    answer; computed in log space, so a confident row does not round to ``p = 1``."""
    log_p = -np.asarray(nll, dtype=np.float64)
    log_p = np.minimum(log_p, -1e-12)  # p = 1 exactly would give ln(0)
    return log_p - np.log(-np.expm1(log_p))


def loss_threshold_scores(nll: Sequence[float]) -> np.ndarray:
    """The loss-threshold attack's score per row: higher means "member"."""
    return -np.asarray(nll, dtype=np.float64)


def lira_offline_scores(target_phi: Sequence[float], reference_phi: np.ndarray) -> np.ndarray:
    """Offline LiRA's score per row: ``Φ((φ − μ_out)/σ)`` with ``μ_out`` the row's mean over the reference
    models (``reference_phi``: models × rows, none trained on any of these rows) and ``σ`` their spread pooled
    over every row (needs at least two reference models)."""
    reference = np.asarray(reference_phi, dtype=np.float64)
    if reference.ndim != 2 or reference.shape[0] < 2:
        raise ValueError("offline LiRA needs a models × rows array from at least two reference models")
    target = np.asarray(target_phi, dtype=np.float64)
    if reference.shape[1] != target.shape[0]:
        raise ValueError(f"{target.shape[0]} target rows but reference rows {reference.shape[1]}")
    mean = reference.mean(axis=0)
    spread = max(float(np.sqrt(reference.var(axis=0, ddof=1).mean())), 1e-12)
    return stats.norm.cdf((target - mean) / spread)


def roc_auc(members: Sequence[float], others: Sequence[float]) -> float:
    """The probability that a random member scores above a random non-member (ties count half)."""
    if len(members) == 0 or len(others) == 0:
        raise ValueError("the AUC needs at least one member and one non-member")
    u = stats.mannwhitneyu(members, others, alternative="two-sided").statistic
    return float(u) / (len(members) * len(others))


def tpr_at_fpr(members: Sequence[float], others: Sequence[float], fpr: float) -> float:
    """The largest share of members flagged by a threshold that flags at most ``fpr`` of the non-members."""
    flagged_at_most = math.floor(fpr * len(others) + 1e-9)
    ranked_others = np.sort(np.asarray(others, dtype=np.float64))[::-1]
    member_scores = np.asarray(members, dtype=np.float64)
    if flagged_at_most >= len(ranked_others):
        return 1.0
    # Flag scores strictly above the (flagged_at_most + 1)-th highest non-member score.
    threshold = ranked_others[flagged_at_most]
    return float((member_scores > threshold).mean())


def party_scores(row_scores: Sequence[float], owners: Sequence[str]) -> dict[str, float]:
    """Each party's mean row score (the party-level test: did this party's rows train the model?)."""
    totals: dict[str, list[float]] = {}
    for score, owner in zip(row_scores, owners, strict=True):
        totals.setdefault(owner, []).append(float(score))
    return {owner: sum(v) / len(v) for owner, v in totals.items()}
