"""Split methods: hand-computed sizes, error messages, and the disjoint/covering/deterministic properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctf.data.splits import SPLITS, apportion, assign_to_parties


def _assert_partition(parts: list[list[int]], num_rows: int, num_parties: int) -> None:
    assert len(parts) == num_parties
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(num_rows))  # covering and disjoint
    assert all(part == sorted(part) for part in parts)


# --- apportion (largest remainders) ---------------------------------------------------------------------
def test_apportion_equal_weights_gives_extra_rows_to_the_first_parties():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]


def test_apportion_largest_remainders():
    # exact shares 3.5, 1.75, 1.75 -> floors 3, 1, 1; the two spare units go to the .75 remainders
    assert apportion(7, [0.5, 0.25, 0.25]) == [3, 2, 2]
    assert apportion(5, [0.2, 0.8]) == [1, 4]
    assert apportion(0, [1, 2]) == [0, 0]


def test_apportion_rejects_bad_weights():
    with pytest.raises(ValueError, match="cannot apportion"):
        apportion(3, [-1.0, 2.0])
    with pytest.raises(ValueError, match="cannot apportion"):
        apportion(3, [0.0, 0.0])


# --- hand-computed splits -------------------------------------------------------------------------------
def test_iid_sizes():
    parts = assign_to_parties("iid", {}, 3, num_rows=10, seed=0)
    assert [len(p) for p in parts] == [4, 3, 3]
    _assert_partition(parts, 10, 3)


def test_by_key_lpt_balances_whole_groups():
    keys = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 2
    parts = assign_to_parties("by_key", {}, 2, keys=keys, seed=3)
    # LPT: a(5)->p0, b(3)->p1, first 2-group->p1 (3<5), second 2-group->p0 (5=5, lower index): loads 7 and 5
    assert [len(p) for p in parts] == [7, 5]
    assert {keys[i] for i in parts[0]} >= {"a"}
    assert {keys[i] for i in parts[1]} >= {"b"}
    for part in parts:
        groups = {keys[i] for i in part}
        assert sum(keys.count(k) for k in groups) == len(part)  # whole groups only


def test_quantity_skew_power_law_sizes():
    # weights 1, 1/2, 1/3 over a random ranking -> shares 6/11, 3/11, 2/11 of the 110 spare rows, plus 1 each
    parts = assign_to_parties(
        "quantity_skew", {"distribution": "power_law", "exponent": 1.0}, 3, num_rows=113, seed=5
    )
    assert sorted(len(p) for p in parts) == [21, 31, 61]
    _assert_partition(parts, 113, 3)


def test_quantity_skew_exponent_zero_is_equal():
    parts = assign_to_parties(
        "quantity_skew", {"distribution": "power_law", "exponent": 0.0}, 4, num_rows=40, seed=1
    )
    assert [len(p) for p in parts] == [10, 10, 10, 10]


def test_dirichlet_alpha_controls_label_skew():
    labels = [c for c in range(10) for _ in range(50)]

    def mean_labels_per_party(alpha: float) -> float:
        parts = assign_to_parties("dirichlet", {"alpha": alpha}, 5, labels=labels, seed=0)
        return sum(len({labels[i] for i in p}) for p in parts) / len(parts)

    assert mean_labels_per_party(0.05) <= 4
    assert mean_labels_per_party(100.0) == 10


def test_dirichlet_min_party_size_is_met():
    labels = [c for c in range(4) for _ in range(25)]
    parts = assign_to_parties("dirichlet", {"alpha": 0.3, "min_party_size": 10}, 4, labels=labels, seed=2)
    assert min(len(p) for p in parts) >= 10
    _assert_partition(parts, 100, 4)


# --- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "params", "parties", "kwargs", "message"),
    [
        ("nope", {}, 2, {"num_rows": 4}, "unknown split method 'nope'; known: by_key, dirichlet, iid"),
        ("by_key", {}, 3, {"keys": ["a", "a", "b"]}, "2 distinct keys for 3 parties"),
        ("by_key", {}, 2, {"num_rows": 4}, "'by_key' needs `keys`"),
        ("dirichlet", {}, 2, {"num_rows": 4}, "'dirichlet' needs `labels`"),
        ("iid", {}, 2, {}, "the number of rows to split is unknown"),
        ("iid", {}, 2, {"labels": [0, 1, 0], "num_rows": 4}, "row counts disagree: labels=3, num_rows=4"),
        ("iid", {}, 0, {"num_rows": 4}, "`num_parties` must be >= 1"),
        ("iid", {}, 5, {"num_rows": 4}, "fewer rows than parties"),
        ("iid", {"alpha": 1}, 2, {"num_rows": 4}, "alpha"),
        ("dirichlet", {"alpha": 0}, 2, {"labels": [0, 1]}, "greater than 0"),
        ("dirichlet", {"min_party_size": 3}, 2, {"labels": [0, 1, 0, 1]}, "needs 6 rows, the dataset has 4"),
        ("quantity_skew", {"exponent": 2.0}, 2, {"num_rows": 4}, "`exponent` has no effect"),
        ("quantity_skew", {"min_party_size": 3}, 2, {"num_rows": 4}, "needs 6 rows"),
    ],
)
def test_errors_say_what_is_wrong(method, params, parties, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        assign_to_parties(method, params, parties, seed=0, **kwargs)


def test_dirichlet_gives_up_with_advice_when_min_size_is_unreachable():
    labels = [0] * 6  # one label: a near-degenerate Dirichlet draw starves parties
    with pytest.raises(ValueError, match="raise `alpha`"):
        assign_to_parties("dirichlet", {"alpha": 0.001, "min_party_size": 3}, 2, labels=labels, seed=0)


def test_registry_lists_the_four_methods():
    assert SPLITS.names() == ["by_key", "dirichlet", "iid", "quantity_skew"]


# --- properties -----------------------------------------------------------------------------------------
@st.composite
def split_cases(draw):
    num_rows = draw(st.integers(1, 120))
    num_parties = draw(st.integers(1, min(num_rows, 8)))
    labels = draw(st.lists(st.integers(0, 5), min_size=num_rows, max_size=num_rows))
    keys = draw(st.lists(st.sampled_from("abcdefghijkl"), min_size=num_rows, max_size=num_rows))
    method, params = draw(
        st.sampled_from(
            [
                ("iid", {}),
                ("dirichlet", {"alpha": 0.1, "min_party_size": 0}),
                ("dirichlet", {"alpha": 10.0, "min_party_size": 0}),
                ("by_key", {}),
                ("quantity_skew", {"alpha": 0.5}),
                ("quantity_skew", {"distribution": "power_law", "exponent": 1.5, "min_party_size": 0}),
            ]
        )
    )
    return num_rows, num_parties, labels, keys, method, params, draw(st.integers(0, 2**32))


@settings(max_examples=150, deadline=None)
@given(split_cases())
def test_every_split_is_disjoint_covering_and_deterministic(case):
    num_rows, num_parties, labels, keys, method, params, seed = case
    if method == "by_key" and len(set(keys)) < num_parties:
        with pytest.raises(ValueError, match="distinct keys"):
            assign_to_parties(method, params, num_parties, keys=keys, seed=seed)
        return
    kwargs = {"labels": labels, "keys": keys}
    parts = assign_to_parties(method, params, num_parties, seed=seed, **kwargs)
    _assert_partition(parts, num_rows, num_parties)
    assert parts == assign_to_parties(method, params, num_parties, seed=seed, **kwargs)
    sizes = [len(p) for p in parts]
    if method == "iid":
        assert max(sizes) - min(sizes) <= 1
    if method == "quantity_skew":
        assert min(sizes) >= params.get("min_party_size", 1)
    if method == "by_key":
        owner = {keys[i]: k for k, part in enumerate(parts) for i in part}
        assert all(owner[keys[i]] == k for k, part in enumerate(parts) for i in part)
        largest_group = max(keys.count(k) for k in set(keys))
        assert max(sizes) <= num_rows / num_parties + largest_group  # list-scheduling bound
