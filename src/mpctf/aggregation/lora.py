"""LoRA-aware math shared by the LoRA strategies: PEFT keys, per-party rank and scale, padding, stacking, SVD.

A LoRA module ``m`` appears in the trainable state as PEFT keys ``m.lora_A.weight`` (``r × in``) and
``m.lora_B.weight`` (``out × r``); its weight change is ``ΔW = s · B A`` with ``s = alpha / r``. Every other
tensor (biases, heads, DoRA magnitudes) is averaged as a plain tensor.

Scale convention of the heterogeneous-rank strategies: the server holds factors with the scale folded into
``B`` (``ΔW = B A`` exactly), which is a PEFT adapter whose ``lora_alpha`` equals its ``r``. Party ``k``
with rank ``r_k`` and alpha ``α_k`` receives ``B / s_k`` (``s_k = α_k / r_k``), so its own PEFT scaling gives
back the same ``ΔW``; its returned ``B`` is multiplied by ``s_k`` again before anything is combined.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mpctf.aggregation.base import PartySpec
from mpctf.messages import NamedTensors, Update

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"

#: One LoRA module's factors ``(A, B)`` with ``ΔW = B @ A``.
Factors = tuple[torch.Tensor, torch.Tensor]


def is_lora_key(name: str) -> bool:
    return name.endswith((A_SUFFIX, B_SUFFIX))


def lora_modules(state: NamedTensors) -> list[str]:
    """Module prefixes that carry a LoRA pair; ``ValueError`` on half a pair or factors of different ranks."""
    modules = sorted({k.removesuffix(A_SUFFIX).removesuffix(B_SUFFIX) for k in state if is_lora_key(k)})
    for m in modules:
        a, b = state.get(m + A_SUFFIX), state.get(m + B_SUFFIX)
        if a is None or b is None:
            raise ValueError(f"LoRA module {m!r} has only one of lora_A / lora_B in the state")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"LoRA module {m!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not pair"
            )
    return modules


def split_lora(tensors: NamedTensors) -> tuple[NamedTensors, NamedTensors]:
    """``(LoRA factors, every other tensor)``."""
    lora = {k: v for k, v in tensors.items() if is_lora_key(k)}
    return lora, {k: v for k, v in tensors.items() if k not in lora}


def module_ranks(state: NamedTensors) -> set[int]:
    """The distinct ranks of the state's LoRA modules."""
    return {state[m + A_SUFFIX].shape[0] for m in lora_modules(state)}


@dataclass(frozen=True)
class LoraParties:
    """Every party's LoRA rank and scale ``alpha / rank``, learnt from ``Strategy.configure_parties``."""

    ranks: dict[str, int]
    scales: dict[str, float]

    @classmethod
    def from_specs(cls, parties: Mapping[str, PartySpec], strategy: str) -> LoraParties:
        ranks, scales = {}, {}
        for name, spec in parties.items():
            if spec.lora_rank is None or spec.lora_alpha is None:
                raise ValueError(
                    f"{strategy} needs the LoRA rank and alpha of every party; party {name!r} lacks one"
                )
            if spec.lora_rank < 1 or not spec.lora_alpha > 0:
                raise ValueError(
                    f"party {name!r}: LoRA rank must be >= 1 and alpha > 0, got {spec.lora_rank}, "
                    f"{spec.lora_alpha}"
                )
            ranks[name], scales[name] = spec.lora_rank, spec.lora_alpha / spec.lora_rank
        if not ranks:
            raise ValueError(f"{strategy} was configured with no parties")
        return cls(ranks, scales)

    def of(self, party: str) -> tuple[int, float]:
        """``(rank, scale)`` of ``party``; ``ValueError`` for a party the strategy was not configured with."""
        if party not in self.ranks:
            raise ValueError(f"party {party!r} is not among the parties the strategy was configured with")
        return self.ranks[party], self.scales[party]

    @property
    def max_rank(self) -> int:
        return max(self.ranks.values())


def require_homogeneous(parties: Mapping[str, PartySpec], strategy: str) -> None:
    """Plain averaging of factors is only meaningful when every party has the same rank and alpha."""
    seen = {(s.lora_rank, s.lora_alpha): name for name, s in parties.items()}
    if len(seen) > 1:
        (first, a), (second, b) = list(seen.items())[:2]
        raise ValueError(
            f"{strategy} needs one LoRA rank and alpha for all parties: party {a!r} has (r, alpha)="
            f"{first}, party {b!r} has {second}; use hetlora, flexlora or flora"
        )


def state_for_rank(state: NamedTensors, rank: int, scale: float) -> NamedTensors:
    """A party's view of scale-folded server factors: the first ``rank`` slots, ``B`` divided by ``scale``."""
    out = dict(state)
    for m in lora_modules(state):
        a, b = state[m + A_SUFFIX], state[m + B_SUFFIX]
        if a.shape[0] < rank:
            raise ValueError(f"LoRA module {m!r} has rank {a.shape[0]} at the server, a party needs {rank}")
        out[m + A_SUFFIX] = a[:rank]
        out[m + B_SUFFIX] = (b[:, :rank].to(torch.float32) / scale).to(b.dtype)
    return out


def local_factors(sent: NamedTensors, delta: NamedTensors, scale: float) -> dict[str, Factors]:
    """The party's trained factors ``(A + ΔA, s · (B + ΔB))`` per module, float32, scale folded into ``B``."""
    out = {}
    for m in lora_modules(sent):
        a, b = (_plus(sent[m + suffix], delta[m + suffix]) for suffix in (A_SUFFIX, B_SUFFIX))
        out[m] = (a, b * scale)
    return out


def _plus(sent: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    # Updates arrive decoded on the CPU; the reconstruction lives where the server keeps its state.
    return sent.to(torch.float32) + delta.to(sent.device, torch.float32)


def zero_pad(factors: Factors, rank: int) -> Factors:
    """``A`` padded with zero rows and ``B`` with zero columns up to ``rank`` (the product is unchanged)."""
    a, b = factors
    extra = rank - a.shape[0]
    return torch.nn.functional.pad(a, (0, 0, 0, extra)), torch.nn.functional.pad(b, (0, extra))


class FactorStack:
    """``Σ_k w_k B_k A_k / Σ_k w_k`` per module, kept exactly as factors stacked to rank ``Σ_k r_k``."""

    def __init__(self) -> None:
        self._a: dict[str, list[torch.Tensor]] = {}
        self._b: dict[str, list[torch.Tensor]] = {}
        self._total = 0.0

    def add(self, factors: dict[str, Factors], weight: float) -> None:
        for m, (a, b) in factors.items():
            self._a.setdefault(m, []).append(a)
            self._b.setdefault(m, []).append(b * weight)
        self._total += weight

    def stacked(self) -> dict[str, Factors]:
        """Per module ``(A_stack, B_stack)``: ``A_k`` one under the other, ``w_k B_k / Σ w`` side by side."""
        if self._total <= 0:
            raise RuntimeError("no LoRA factors were stacked this round")
        return {
            m: (torch.cat(self._a[m], dim=0), torch.cat(self._b[m], dim=1) / self._total) for m in self._a
        }


def best_rank_factors(a: torch.Tensor, b: torch.Tensor, rank: int, fallback_a: torch.Tensor) -> Factors:
    """Factors ``(A_r, B_r)`` of the best rank-``rank`` approximation of ``ΔW = b @ a`` (Eckart–Young).

    Computed from the factors without forming ``ΔW``: QR of ``b`` and ``aᵀ``, SVD of the small core, so the
    cost is O((out + in) · K²) for a stack of rank ``K``. ``A_r`` has orthonormal rows (the top right singular
    vectors) and ``B_r = ΔW A_rᵀ = U_r Σ_r``. When ``ΔW`` has fewer than ``rank`` directions, the missing rows
    of ``A_r`` are completed orthonormally from ``fallback_a``'s rows with zero ``B`` columns: such slots
    change nothing now yet stay trainable (a zero ``A`` row with a zero ``B`` column never gets a gradient).
    """
    if rank > a.shape[1]:
        raise ValueError(f"rank {rank} exceeds the module's input size {a.shape[1]}")
    a, b = (
        a.to(torch.float64),
        b.to(torch.float64),
    )  # small matrices: float64 keeps the product exact to 1e-12
    q_a, r_a = torch.linalg.qr(a.T)
    _, r_b = torch.linalg.qr(b)
    _, _, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    v = q_a @ vh[:rank].T
    if v.shape[1] < rank:
        q, _ = torch.linalg.qr(torch.cat([v, fallback_a.T.to(v)], dim=1))
        v = torch.cat([v, q[:, v.shape[1] : rank]], dim=1)
    return v.T.contiguous().float(), (b @ (a @ v)).float()


def fresh_factors(rank: int, a_like: torch.Tensor, b_like: torch.Tensor, seed: str) -> Factors:
    """A new adapter of ``rank`` as PEFT initialises one: Kaiming-uniform ``A`` (bound ``1/√in``), zero ``B``.

    Seeded by ``seed`` (any string) so the server can rebuild exactly what it sent to a party.
    """
    generator = torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
    )
    a = torch.empty(rank, a_like.shape[1], dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    b = torch.zeros(b_like.shape[0], rank, dtype=torch.float32)
    return a.to(a_like.device, a_like.dtype), b.to(b_like.device, b_like.dtype)


def configured(lora: LoraParties | None, strategy: str) -> LoraParties:
    """The parties' ranks, or ``ValueError`` when ``configure_parties`` was never called."""
    if lora is None:
        raise ValueError(f"{strategy} needs configure_parties() with every party's LoRA rank and alpha first")
    return lora


def require_server_rank(state: NamedTensors, rank: int, strategy: str) -> None:
    """The server's adapter must have exactly ``rank`` in every module (and at least one module)."""
    ranks = module_ranks(state)
    if ranks != {rank}:
        raise ValueError(
            f"{strategy} holds the global adapter at rank {rank} (build the server's adapter with r={rank} "
            f"and lora_alpha={rank}, so its scale is 1); the global state has LoRA ranks "
            f"{sorted(ranks) or 'none'}"
        )


def party_factors(
    update: Update, sent: NamedTensors, scale: float
) -> tuple[dict[str, Factors], NamedTensors]:
    """``(the party's scale-folded trained factors per module, its other tensors' deltas)``."""
    lora, rest = split_lora(update.tensors)
    return local_factors(sent, lora, scale), rest
