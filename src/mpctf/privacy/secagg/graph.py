"""Who masks with whom: the complete graph (SecAgg) or a random k-regular graph (SecAgg+).

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead") replaces the complete graph by a sparse random one: each party masks with, and
secret-shares among, ``k`` neighbours only, so its cost grows with ``k = O(log n)`` instead of ``n``. We use a
Harary graph ``H(k, n)`` over a random permutation: parties on a ring in shuffled order, each joined to the
``k/2`` nearest on either side, which is exactly ``k``-regular and connected.

The permutation's seed is a hash of every advertised public key, so the server cannot choose the graph and
every party computes the same one without another message.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any


def graph_seed(public_keys: Mapping[str, Mapping[str, Any]]) -> int:
    """A 256-bit seed binding the graph to the exact set of advertised keys."""
    digest = hashlib.sha256()
    for name in sorted(public_keys):
        digest.update(name.encode() + b"\0")
        for field in sorted(public_keys[name]):
            digest.update(field.encode() + b"\0" + bytes(public_keys[name][field]))
    return int.from_bytes(digest.digest(), "big")


def neighbours(parties: Sequence[str], num_neighbours: int | None, seed: int) -> dict[str, frozenset[str]]:
    """Each party's neighbours (itself excluded); complete when ``num_neighbours`` is None or ≥ n − 1."""
    names = sorted(parties)
    n = len(names)
    if num_neighbours is None or num_neighbours >= n - 1:
        return {u: frozenset(v for v in names if v != u) for u in names}
    # random.Random is fine: the graph is public, the seed only has to be unpredictable before keys exist.
    order = names[:]
    random.Random(seed).shuffle(order)
    half = num_neighbours // 2
    graph: dict[str, set[str]] = {u: set() for u in names}
    for i, u in enumerate(order):
        for step in range(1, half + 1):
            v = order[(i + step) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: frozenset(vs) for u, vs in graph.items()}
