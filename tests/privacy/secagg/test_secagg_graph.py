from __future__ import annotations

import pytest

from mpctf.privacy.secagg.graph import graph_seed, neighbours

NAMES = [f"p{i:02d}" for i in range(12)]


@pytest.mark.parametrize("k", [2, 4, 6])
def test_harary_graph_is_k_regular_and_symmetric(k):
    graph = neighbours(NAMES, k, seed=7)
    for u, vs in graph.items():
        assert len(vs) == k
        assert u not in vs
        assert all(u in graph[v] for v in vs)


def test_complete_graph_without_or_with_large_k():
    for k in (None, 11, 20):
        graph = neighbours(NAMES, k, seed=1)
        assert all(vs == frozenset(NAMES) - {u} for u, vs in graph.items())


def test_graph_depends_on_seed_only():
    assert neighbours(NAMES, 4, seed=3) == neighbours(list(reversed(NAMES)), 4, seed=3)
    assert neighbours(NAMES, 4, seed=3) != neighbours(NAMES, 4, seed=4)


def test_graph_seed_binds_every_key():
    keys = {"a": {"enc_key": b"1", "mask_key": b"2"}, "b": {"enc_key": b"3", "mask_key": b"4"}}
    changed = {**keys, "b": {"enc_key": b"3", "mask_key": b"5"}}
    assert graph_seed(keys) == graph_seed(dict(reversed(list(keys.items()))))
    assert graph_seed(keys) != graph_seed(changed)
