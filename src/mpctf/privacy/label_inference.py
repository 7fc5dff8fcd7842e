"""What a curious server can read from one party's update: the share of each label in the party's rows.

A calibration attack in the spirit of LLG+ (Wainakh, Ventola, Müßig, Keim, Cordero, Zimmer, Hollick, Kersting,
PoPETs 2022), made for updates of any shape (LoRA's included, where no output-layer row ties a label to a sign):
the server, holding a few public labelled rows, trains from the same global state with the parties' own recipe
on rows of one label at a time, which gives one reference update ``U_c`` per label. It then explains the party's
update as a non-negative mix ``Δ ≈ Σ_c w_c·U_c`` (non-negative least squares) and reads the label shares as
``w / Σ w``. Under secure aggregation or homomorphic encryption the server holds only the sum of the updates, so
the same attack yields the shares of all parties' rows together, and nothing about any one party beyond them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import optimize


def flatten(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """One float64 vector of a named update, in name order (every party's update flattens alike)."""
    return np.concatenate([tensors[k].detach().reshape(-1).double().cpu().numpy() for k in sorted(tensors)])


def infer_label_shares(update: np.ndarray, references: Sequence[np.ndarray]) -> np.ndarray:
    """The label shares that best explain ``update`` as a non-negative mix of the per-label ``references``
    (uniform when no mix explains any of it)."""
    if not references:
        raise ValueError("need one reference update per label")
    basis = np.stack([np.asarray(r, dtype=np.float64) for r in references], axis=1)
    if basis.shape[0] != np.asarray(update).shape[0]:
        raise ValueError(f"update has {np.asarray(update).shape[0]} values, references {basis.shape[0]}")
    weights, _ = optimize.nnls(basis, np.asarray(update, dtype=np.float64))
    total = float(weights.sum())
    return weights / total if total > 0 else np.full(len(references), 1.0 / len(references))


def share_error(estimated: Sequence[float], true: Sequence[float]) -> float:
    """Mean absolute error between estimated and true label shares."""
    return float(
        np.mean(np.abs(np.asarray(estimated, dtype=np.float64) - np.asarray(true, dtype=np.float64)))
    )
