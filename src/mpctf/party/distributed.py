"""One party trained by several processes: torch.distributed data parallelism inside the party.

The party process (the long-lived :class:`~mpctf.party.worker.PartyWorker`) is rank 0 and the only rank that
talks to the federation. When it starts it launches ranks 1..N-1 as ``python -m mpctf.party.rank_process``
subprocesses; each loads the model and the party's data once, like rank 0. Every round rank 0 broadcasts the
round's plan (chunk indices, optimizer settings, the strategy's party hooks) and then the global trainable state
tensor by tensor; every rank trains its shard of each step under
:class:`~torch.nn.parallel.DistributedDataParallel`, and rank 0 alone builds the update.

Equivalence with one process. A step's examples are split into N contiguous shards; a rank weights each of its
micro-batch losses by ``len(micro-batch) / len(step) · N`` and DDP averages gradients over the N ranks, so the
summed gradient is exactly the one-process gradient whenever the per-micro-batch loss does not depend on how
examples are grouped (a fixed number of supervised tokens per example: classification with one-token
verbalizers, packed causal-LM blocks). Instruction pairs with answers of different lengths are averaged per
token within each micro-batch, in one process as in N, so there the N-process step is the same estimator of the
gradient, not the same number. A rank whose shard is empty (a last step smaller than N) runs one example with
weight 0, because every rank must join every gradient all-reduce.

Sharding. With ``training.sharding: fsdp`` (the default for full and pretrain models on GPUs) the ranks hold
the model under FSDP2 (``torch.distributed.fsdp.fully_shard``, every decoder layer a unit): each rank keeps
``1/N`` of the parameters, gradients and AdamW moments, so a party can train a model that does not fit one
device. The round's global state is then scattered from rank 0 instead of broadcast, and gathered back to rank 0
tensor by tensor after training. Gradients are reduce-scattered and averaged exactly as under DDP, so the
equivalence above holds for both.

Process groups. Several parties share one process on the ``local`` backend, so under DDP a party's group cannot
be the process-wide default group of ``init_process_group``; each party builds its own group over a private
``TCPStore``. FSDP's device mesh needs the default group, so FSDP is refused on the local backend and a sharded
party's processes make their group the default one. Backends: gloo on CPU, NCCL on CUDA (rank ``r`` uses
``cuda:r``, bf16 compute: autocast under DDP, FSDP's mixed-precision policy with float32 gradient reduction).

Teardown. The helpers die with rank 0 whatever ends it: :meth:`PartyRanks.close` (atexit, and ``mpctf.run``'s
``finally``) signals them, the Linux parent-death signal covers a killed rank 0, they share
rank 0's process group (``mpctf launch`` stops whole groups) and a broken connection ends their collectives.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from mpctf.config import FSDP_MODES, RunConfig, dump_config
from mpctf.data.tasks import Example
from mpctf.errors import LaunchError
from mpctf.messages import NamedTensors
from mpctf.model.modes.base import check_state_keys

if TYPE_CHECKING:
    from mpctf.model.bundle import ModelBundle

GROUP_HOST = "127.0.0.1"
#: How long rank 0 waits for the other ranks to load the model and join.
JOIN_TIMEOUT_S = 600.0


class Shard:
    """How one process takes part in a step. This base is the single-process case: the whole step, no sync."""

    world = 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to call in training (DDP around the model when there are several ranks)."""
        return model

    def split(self, step: Sequence[Example]) -> tuple[Sequence[Example], float]:
        """This rank's examples of a step and the factor on its losses (0 for a stand-in example)."""
        return step, 1.0

    def micro_context(self, model: torch.nn.Module, *, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Around one micro-batch's forward and backward; gradients are synchronized on the ``last`` one."""
        return contextlib.nullcontext()

    def total(self, values: Sequence[float]) -> list[float]:
        """Per-rank statistics summed over the ranks (every rank gets the sums)."""
        return list(values)


class RankShard(Shard):
    """A rank of a party's process group: its shard of every step, gradients averaged over the ranks (DDP, or
    FSDP2 when ``sharded``), bf16 on GPUs."""

    def __init__(
        self, group: dist.ProcessGroup, rank: int, world: int, device: torch.device, *, sharded: bool = False
    ) -> None:
        self.group, self.rank, self.world, self.device = group, rank, world, device
        self.sharded = sharded
        self._wrapped: torch.nn.Module | None = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        # Built once: both wrappers are collectives (DDP copies rank 0's weights to all; FSDP shards them).
        if self._wrapped is None:
            self._wrapped = self._shard(model) if self.sharded else self._ddp(model)
        return self._wrapped

    def _ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, process_group=self.group)

    def _shard(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if self.device.type == "cuda"
            else MixedPrecisionPolicy()
        )
        # One FSDP unit per block Transformers keeps whole (the decoder layers): a block's parameters are
        # gathered only while it computes. The root unit takes the rest (embeddings, final norm, head).
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model

    @torch.no_grad()
    def load_state(self, bundle: ModelBundle, state: NamedTensors | None) -> None:
        """Make every rank's trainable parameters the global ``state`` that rank 0 holds (others pass None)."""
        params = bundle.mode.trainable_parameters(bundle.model)
        if not self.sharded:
            if self.rank == 0:
                assert state is not None
                bundle.mode.set_state(bundle.model, state)
            self.broadcast_tensors(params)
            return
        from torch.distributed.tensor import distribute_tensor

        if self.rank == 0:
            assert state is not None
            check_state_keys(params, state, "model state")
        for key in sorted(params):
            p = params[key]
            full = (
                state[key] if state is not None else torch.empty(p.shape, dtype=p.dtype, device=self.device)
            )
            if tuple(full.shape) != tuple(p.shape):
                raise ValueError(
                    f"model state: {key!r} has shape {tuple(full.shape)}, the model's is {tuple(p.shape)}"
                )
            # Rank 0 sends each rank its own slice; the others' placeholders are only shapes.
            part = distribute_tensor(
                full.to(self.device, p.dtype), p.device_mesh, p.placements, src_data_rank=0
            )
            p.to_local().copy_(part.to_local())

    @torch.no_grad()
    def gather_state(self, bundle: ModelBundle) -> NamedTensors | None:
        """The trained state, whole, on rank 0's CPU (None on the other ranks, which must call this too)."""
        if not self.sharded:
            return bundle.mode.get_state(bundle.model) if self.rank == 0 else None
        params = bundle.mode.trainable_parameters(bundle.model)
        state: NamedTensors = {}
        # One tensor at a time, so no rank ever holds more than one gathered tensor beyond its shard (rank 0
        # keeps the state it returns); the other ranks join the all-gather and drop the result.
        for key in sorted(params):
            whole = params[key].full_tensor()
            if self.rank == 0:
                state[key] = whole.cpu()
        return state if self.rank == 0 else None

    def split(self, step: Sequence[Example]) -> tuple[Sequence[Example], float]:
        lo, hi = self.rank * len(step) // self.world, (self.rank + 1) * len(step) // self.world
        if lo == hi:
            return step[:1], 0.0
        return step[lo:hi], float(self.world)

    @contextlib.contextmanager
    def micro_context(self, model: torch.nn.Module, *, last: bool) -> Iterator[None]:
        if self.sharded:
            # FSDP keeps sharded gradients, so accumulating across micro-batches costs no memory; its own
            # policy sets the bf16 compute.
            model.set_requires_gradient_sync(last)  # type: ignore[operator]
            yield
            return
        sync = contextlib.nullcontext() if last else model.no_sync()  # type: ignore[operator]
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with sync, autocast:
            yield

    def total(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        self.group.allreduce(t).wait()
        return t.tolist()

    # --- rank 0 → all messages ----------------------------------------------------------------------
    def broadcast_object(self, obj: Any = None) -> Any:
        """``obj`` from rank 0, pickled; every rank returns it."""
        if self.rank == 0:
            data = pickle.dumps(obj)
            size = torch.tensor([len(data)], dtype=torch.long, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.long, device=self.device)
        self.group.broadcast(size, 0).wait()
        buf = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device)
            if self.rank == 0
            else torch.empty(int(size), dtype=torch.uint8, device=self.device)
        )
        self.group.broadcast(buf, 0).wait()
        return obj if self.rank == 0 else pickle.loads(buf.cpu().numpy().tobytes())

    @torch.no_grad()
    def broadcast_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Overwrite every rank's ``tensors`` (the trainable parameters) with rank 0's, in key order."""
        for key in sorted(tensors):
            self.group.broadcast(tensors[key].data, 0).wait()


def party_device(rank: int, use_cuda: bool) -> torch.device:
    """Rank ``r`` trains on ``cuda:r`` on a GPU host, on the CPU otherwise."""
    return torch.device("cuda", rank) if use_cuda else torch.device("cpu")


def party_sharding(config: RunConfig, device: torch.device) -> str:
    """``training.sharding``, or its default: fsdp for full and pretrain on GPUs off the local backend."""
    if config.training.sharding is not None:
        return config.training.sharding
    shardable = config.training.mode in FSDP_MODES and config.backend.name != "local"
    return "fsdp" if shardable and device.type == "cuda" else "ddp"


def join_group(
    store: dist.Store, rank: int, world: int, device: torch.device, timeout_s: float, *, sharded: bool = False
) -> RankShard:
    """This rank's :class:`RankShard` in a party group of ``world`` ranks rendezvousing through ``store``.

    Under DDP the group is built the way ``torch.distributed.new_group`` builds one (a ``ProcessGroup`` with one
    backend registered per device type), but over the party's own store, since the default group is
    process-wide. A ``sharded`` party owns its processes, so its group is the default one FSDP's mesh needs.
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    prefix = dist.PrefixStore("mpctf-party/", store)
    if sharded:
        cuda = device.type == "cuda"
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            store=prefix,
            rank=rank,
            world_size=world,
            timeout=timeout,
            device_id=device if cuda else None,
        )
        return RankShard(dist.group.WORLD, rank, world, device, sharded=True)  # type: ignore[arg-type]
    group = dist.ProcessGroup(prefix, rank, world)
    if device.type == "cuda":
        backend = dist.ProcessGroupNCCL(prefix, rank, world, dist.ProcessGroupNCCL.Options())
        kind = dist.ProcessGroup.BackendType.NCCL
    else:
        backend = dist.ProcessGroupGloo(prefix, rank, world, timeout)
        kind = dist.ProcessGroup.BackendType.GLOO
    group._set_default_backend(kind)
    group._register_backend(torch.device(device.type), kind, backend)
    return RankShard(group, rank, world, device)


def _child_env() -> dict[str, str]:
    """This environment, with the folder this ``mpctf`` was imported from first on the path, so every rank
    runs the same code as rank 0 (a source checkout may shadow an installed copy)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, path]) if path else root}


def _threads_per_rank(config: RunConfig, world: int) -> int:
    return config.training.threads or max(1, (os.cpu_count() or 1) // world)


class PartyRanks:
    """Rank 0's handle on its party's other ranks: start them, drive them each round, stop them."""

    def __init__(self, config: RunConfig, party: str, world: int, bundle: ModelBundle) -> None:
        self.party, self.world, self.bundle = party, world, bundle
        self.timeout_s = config.federation.round_timeout_s
        device = bundle.device
        self.sharding = party_sharding(config, device)
        use_cuda = device.type == "cuda"
        if use_cuda and torch.cuda.device_count() < world:
            raise LaunchError(
                f"party {party!r}: {world} processes need {world} GPUs, {torch.cuda.device_count()} are visible"
            )
        self.store = dist.TCPStore(GROUP_HOST, 0, world, True, wait_for_workers=False)
        self.logs: list[Any] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.failed = ""
        text = dump_config(config)
        atexit.register(self.close)
        for rank in range(1, world):
            log = tempfile.TemporaryFile()  # noqa: SIM115  (kept open for the rank's lifetime)
            argv = [sys.executable, "-m", "mpctf.party.rank_process", "--party", party, "--rank", str(rank)]
            argv += ["--world", str(world), "--port", str(self.store.port), "--parent", str(os.getpid())]
            argv += ["--threads", str(_threads_per_rank(config, world)), "--sharding", self.sharding]
            argv += ["--cuda"] if use_cuda else []
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=_child_env()
            )
            assert proc.stdin is not None
            proc.stdin.write(text.encode())
            proc.stdin.close()
            self.logs.append(log)
            self.procs.append(proc)
        self._wait_ready()
        self.shard = join_group(self.store, 0, world, device, self.timeout_s, sharded=self.sharding == "fsdp")
        self.shard.wrap(bundle.model)

    def _wait_ready(self) -> None:
        """Wait until every rank has loaded its model, failing early (with its last line) if one exits."""
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        keys = [f"ready/{r}" for r in range(1, self.world)]
        while not self.store.check(keys):
            for rank, proc in enumerate(self.procs, start=1):
                if proc.poll() is not None:
                    reason = f"party {self.party!r}: rank {rank} exited: {self._last_line(rank)}"
                    self.close()
                    raise LaunchError(reason)
            if time.monotonic() > deadline:
                self.close()
                raise LaunchError(f"party {self.party!r}: ranks did not start within {JOIN_TIMEOUT_S:g} s")
            time.sleep(0.2)

    def _last_line(self, rank: int) -> str:
        log = self.logs[rank - 1]
        log.seek(0)
        lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit code {self.procs[rank - 1].returncode}"

    @contextlib.contextmanager
    def round(self, state: NamedTensors, plan: dict[str, Any]) -> Iterator[RankShard]:
        """Send the round's ``plan`` to every rank and load the global ``state`` on all of them, then yield rank
        0's shard to train with; the block ends with :meth:`RankShard.gather_state`, which every rank joins.
        A round that fails part-way leaves the ranks out of step, so it stops them: the party's later rounds
        fail with that reason instead of hanging."""
        self._check_alive()
        try:
            self.shard.broadcast_object(plan)
            self.shard.load_state(self.bundle, state)
            yield self.shard
        except BaseException as exc:
            self.failed = f"a round failed part-way ({type(exc).__name__}: {exc})"
            self.close()
            raise

    def _check_alive(self) -> None:
        if self.failed:
            raise LaunchError(f"party {self.party!r}: its training processes were stopped: {self.failed}")
        for rank, proc in enumerate(self.procs, start=1):
            if proc.poll() is not None:
                raise LaunchError(f"party {self.party!r}: rank {rank} has exited: {self._last_line(rank)}")

    def close(self) -> None:
        """Stop every other rank: SIGTERM, then SIGKILL after a grace period.

        No cooperative stop message: Ctrl-C reaches the whole group, so the ranks may be dying already, and a
        collective they never join would keep rank 0 waiting. The ranks hold nothing that a signal loses; the
        run's state lives in rank 0.
        """
        procs, self.procs = self.procs, []
        if not procs:
            return
        atexit.unregister(self.close)
        shard = getattr(self, "shard", None)
        if shard is not None and shard.sharded and dist.is_initialized():
            # The default group is process-wide: free it so this process can host a later party.
            dist.destroy_process_group()
        deadline = time.monotonic() + 5.0
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in procs:
                if p.poll() is None:
                    p.send_signal(sig)
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
            if all(p.poll() is not None for p in procs):
                break
            deadline = time.monotonic() + 5.0
        for log in self.logs:
            log.close()
