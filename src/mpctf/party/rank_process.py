"""Ranks 1..N-1 of a party trained by several processes: ``python -m mpctf.party.rank_process``.

Each loads the model and the party's data once, joins the party's process group, then trains whatever rank 0
broadcasts until it is stopped (see :mod:`mpctf.party.distributed` for the protocol and the teardown). A module
of its own, so the group's mechanics (:mod:`mpctf.party.distributed`) and the training loop
(:mod:`mpctf.party.trainer`, which uses them) do not import each other.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import io
import os
import signal
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist
import yaml

from mpctf.config import RunConfig, load_config
from mpctf.data.federated import FederatedData
from mpctf.data.tasks import make_task
from mpctf.model.bundle import ModelBundle
from mpctf.party.distributed import GROUP_HOST, JOIN_TIMEOUT_S, join_group, party_device
from mpctf.party.trainer import OptimizerMemory, train_round


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies (and exit now if it already has)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(1)


def serve_rank(
    config: RunConfig, party: str, rank: int, world: int, port: int, use_cuda: bool, sharding: str
) -> None:
    """Load the model and the party's data, join the group, then train whatever rank 0 sends until stopped."""
    device = party_device(rank, use_cuda)
    if use_cuda:
        torch.cuda.set_device(device)
    bundle = ModelBundle.load(config, config.party_training(party))
    task = make_task(config, bundle.tokenizer)
    examples = task.encode_all(FederatedData(config).party_rows(party), f"party {party!r} data")
    store = dist.TCPStore(GROUP_HOST, port, world, False, timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))
    store.set(f"ready/{rank}", "1")
    shard = join_group(
        store, rank, world, device, config.federation.round_timeout_s, sharded=sharding == "fsdp"
    )
    shard.wrap(bundle.model)
    # This rank's part of the party's optimizer state (its shard's, under FSDP), kept like rank 0's.
    memory = OptimizerMemory() if config.party_training(party).optimizer_state == "keep" else None
    while True:
        msg = shard.broadcast_object()
        hooks = msg["hooks"]
        bundle.mode.merge_into_base(bundle.model, hooks.merge_into_base())
        shard.load_state(bundle, None)
        chunk = [examples[i] for i in msg["chosen"]]
        train_round(bundle, task, chunk, msg["settings"], hooks, shard=shard, memory=memory)
        shard.gather_state(bundle)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="One extra training rank of an MPCTF party (config on stdin)."
    )
    parser.add_argument("--party", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--sharding", choices=["ddp", "fsdp"], required=True)
    parser.add_argument("--cuda", action="store_true")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    torch.set_num_threads(args.threads)
    config = load_config(yaml.safe_load(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")))
    try:
        serve_rank(config, args.party, args.rank, args.world, args.port, args.cuda, args.sharding)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole foreground group; rank 0 reports it
        sys.exit(130)


if __name__ == "__main__":
    main()
