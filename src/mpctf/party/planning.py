"""Per-party data plans: the volume a party reports, and the chunk plan the server derives from all reports."""

from __future__ import annotations

from collections.abc import Sequence

from mpctf.config import RunConfig
from mpctf.data.chunking import PartyDataStats, PartyPlan, plan_parties
from mpctf.data.federated import FederatedData
from mpctf.data.tasks import Example, make_task
from mpctf.errors import DataError
from mpctf.model.loading import load_tokenizer


def party_stats(examples: Sequence[Example]) -> PartyDataStats:
    """What a party reports about its data: sample count and token lengths (never the data itself)."""
    lengths = [len(e.input_ids) for e in examples]
    return PartyDataStats(num_samples=len(lengths), token_lengths=lengths)


def make_plans(config: RunConfig, stats: dict[str, PartyDataStats]) -> dict[str, PartyPlan]:
    """Apply ``data.partition`` to every party's reported volume."""
    part = config.data.partition
    try:
        return plan_parties(part.name, part.params, stats, batch_size=config.training.batch_size)
    except ValueError as exc:
        raise DataError(f"data.partition: {exc}") from None


def local_plans(config: RunConfig) -> dict[str, PartyPlan]:
    """Plans computed on this machine, for parties whose data is readable here (simulations, ``mpctf plan``)."""
    task = make_task(config, load_tokenizer(config.model.name))
    data = FederatedData(config)
    stats = {
        p: party_stats(task.encode_all(data.party_rows(p), f"party {p!r} data")) for p in config.party_names
    }
    return make_plans(config, stats)
