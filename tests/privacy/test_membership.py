"""Membership-inference scores and figures against hand-computed values."""

import math

import numpy as np
import pytest
from scipy import stats

from mpctf.privacy.membership import (
    lira_offline_scores,
    logit_confidence,
    loss_threshold_scores,
    party_scores,
    roc_auc,
    tpr_at_fpr,
)


def test_auc_counts_pairs_and_half_ties() -> None:
    # (3>1), (3>2), (2>1), (2=2 counts ½): 3.5 of 4 pairs.
    assert roc_auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(0.875)
    assert roc_auc([0.0], [1.0]) == 0.0


def test_tpr_at_fpr_flags_no_more_non_members_than_allowed() -> None:
    members, others = [5.0, 4.0, 3.0, 0.0], [4.5, 2.0, 1.0, -1.0]
    assert tpr_at_fpr(members, others, 0.25) == pytest.approx(0.75)  # threshold above 2: flags 4.5 only
    assert tpr_at_fpr(members, others, 0.0) == pytest.approx(0.25)  # threshold above 4.5
    assert tpr_at_fpr(members, others, 0.01) == pytest.approx(0.25)  # 1 % of 4 rows is none


def test_logit_confidence_of_known_probabilities() -> None:
    phi = logit_confidence([math.log(2), -math.log(0.9), 50.0])
    assert phi[0] == pytest.approx(0.0, abs=1e-12)
    assert phi[1] == pytest.approx(math.log(9))
    assert phi[2] == pytest.approx(-50.0, abs=1e-9)  # p = e^-50: φ ≈ ln p
    assert np.isfinite(logit_confidence([0.0])).all()  # p = 1 stays finite
    assert list(loss_threshold_scores([1.0, 2.0])) == [-1.0, -2.0]


def test_offline_lira_uses_the_row_mean_and_a_pooled_spread() -> None:
    reference = np.array([[0.0, 1.0], [2.0, 3.0]])  # row means 1 and 2; each row's variance 2
    scores = lira_offline_scores([1.0, 2.0 + math.sqrt(2)], reference)
    assert scores[0] == pytest.approx(0.5)
    assert scores[1] == pytest.approx(stats.norm.cdf(1.0))
    with pytest.raises(ValueError, match="at least two reference models"):
        lira_offline_scores([1.0], np.array([[0.0]]))


def test_party_scores_average_each_party_rows() -> None:
    assert party_scores([1.0, 3.0, 5.0], ["a", "a", "b"]) == {"a": 2.0, "b": 5.0}
