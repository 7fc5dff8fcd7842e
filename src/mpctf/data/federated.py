"""Which rows each party trains on and which rows the server evaluates on.

Every process computes this independently from the config and the seed, so the server and each party agree
without exchanging any data: a party only ever reads its own rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mpctf.config import RunConfig
from mpctf.data.sources import Row, Rows, filter_rows, load_rows, read_file, take
from mpctf.data.splits import assign_to_parties
from mpctf.errors import DataError


def _holdout(
    rows: Sequence[Row], fraction: float, group_by: str | None, seed: int
) -> tuple[list[int], list[int]]:
    """(train indices, test indices); with ``group_by`` whole groups go to the test side."""
    rng = random.Random(f"holdout:{seed}")
    if group_by is None:
        order = list(range(len(rows)))
        rng.shuffle(order)
        cut = round(fraction * len(rows))
        return sorted(order[cut:]), sorted(order[:cut])
    if group_by not in rows[0]:
        raise DataError(f"data.eval.group_by: rows have no field {group_by!r}; fields: {', '.join(rows[0])}")
    groups = sorted({r[group_by] for r in rows})
    rng.shuffle(groups)
    target, test_groups, taken = fraction * len(rows), set(), 0
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r[group_by]] = sizes.get(r[group_by], 0) + 1
    for g in groups:
        if taken >= target:
            break
        test_groups.add(g)
        taken += sizes[g]
    test = [i for i, r in enumerate(rows) if r[group_by] in test_groups]
    train = [i for i, r in enumerate(rows) if r[group_by] not in test_groups]
    return train, test


class FederatedData:
    """The shared dataset's split into a test set and per-party shares (computed lazily, deterministically)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._shared: Rows | None = None
        self._train: list[int] = []
        self._test: list[int] = []

    def _load_shared(self) -> Rows:
        if self._shared is None:
            ds = self.config.data.dataset
            if ds is None:
                self._shared = []
            else:
                self._shared = load_rows(ds, self.config.seed)
                ev = self.config.data.eval
                self._train, self._test = _holdout(
                    self._shared, ev.test_fraction, ev.group_by, self.config.seed
                )
        return self._shared

    def eval_rows(self) -> Rows:
        """The server's held-out evaluation rows (at most ``data.eval.max_samples``, a seeded sample)."""
        ev = self.config.data.eval
        if ev.path is not None:
            rows = read_file(ev.path)
        else:
            shared = self._load_shared()
            if not shared:
                raise DataError("data.eval: no shared dataset to hold out test rows from; set data.eval.path")
            rows = take(shared, self._test)
        if ev.where:
            rows = filter_rows(rows, ev.where, "data.eval")
        if ev.max_samples is not None and len(rows) > ev.max_samples:
            picked = random.Random(f"eval:{self.config.seed}").sample(range(len(rows)), ev.max_samples)
            rows = take(rows, picked)
        return rows

    def party_rows(self, party: str) -> Rows:
        """The training rows of one party: its own files, or its share of the shared dataset (less its
        validation slice when ``data.validation`` is set)."""
        return self.party_split(party)[0]

    def party_split(self, party: str) -> tuple[Rows, Rows]:
        """The party's training rows and its validation slice (``data.validation``; empty when it is off),
        read once."""
        rows = self._all_party_rows(party)
        val = self.config.data.validation
        if val is None:
            return rows, []
        count = round(val.fraction * len(rows))
        if val.max_samples is not None:
            count = min(count, val.max_samples)
        if count < 1 or count >= len(rows):
            raise DataError(
                f"party {party!r}: data.validation.fraction {val.fraction:g} of its {len(rows)} rows leaves "
                f"{'no validation' if count < 1 else 'no training'} rows"
            )
        picked = set(random.Random(f"validation:{self.config.seed}:{party}").sample(range(len(rows)), count))
        return (
            take(rows, [i for i in range(len(rows)) if i not in picked]),
            take(rows, sorted(picked)),
        )

    def _all_party_rows(self, party: str) -> Rows:
        spec = self.config.party(party)
        if spec.data is not None:
            return load_rows(spec.data, self.config.seed)
        shared = self._load_shared()
        sharing = [p.name for p in self.config.parties if p.data is None]
        split = self.config.data.split
        train_rows = take(shared, self._train)
        labels = [r.get(self.config.task.label_field, "") for r in train_rows]
        # `key` names the row field that groups rows; the split method itself only sees the key values.
        params = dict(split.params)
        key = params.pop("key", None)
        if key is not None and train_rows and key not in train_rows[0]:
            raise DataError(f"data.split.key: rows have no field {key!r}; fields: {', '.join(train_rows[0])}")
        keys = [r[key] for r in train_rows] if key is not None else None
        try:
            shares = assign_to_parties(
                split.name,
                params,
                len(sharing),
                labels=labels,
                keys=keys,
                seed=self.config.seed,
                num_rows=len(train_rows),
            )
        except ValueError as exc:
            raise DataError(f"data.split: {exc}") from None
        rows = take(train_rows, shares[sharing.index(party)])
        if not rows:
            raise DataError(
                f"party {party!r} received no rows from data.split; use fewer parties or another split"
            )
        return rows
