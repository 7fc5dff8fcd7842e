"""Client-level differential privacy for federated averaging: clipping and Gaussian noise.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang, 2018, "Learning Differentially Private Recurrent Language Models"):
each selected party clips its update to global L2 norm ``C``,

    Δ̂_k = Δ_k · min(1, C / ‖Δ_k‖₂)

and the server releases the noised mean over the ``m`` selected parties (``m`` public and fixed per round):

    Δ̄ = (Σ_k Δ̂_k + N(0, σ²C² I)) / m

Adding or removing one party changes the sum by at most ``C``, so the release is a Gaussian mechanism with
noise multiplier ``σ``; with parties sampled at rate ``q`` the accountant composes Poisson-subsampled
Gaussians.

The noise can be added centrally (the server adds std ``σC`` to the sum: it must be trusted with the exact
sum) or distributed (each of ``n`` parties adds std ``σC/√n`` before secure aggregation, so the sum carries
std ``σC`` and nobody sees an un-noised update or sum). Noise comes from a ``torch.Generator``: pass a seeded
one for reproducible tests; :func:`make_generator` without a seed draws its seed from the OS's CSPRNG.
"""

from __future__ import annotations

import math
import secrets

import torch

from mpctf.messages import NamedTensors


def make_generator(seed: int | None = None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for DP noise; ``seed=None`` seeds it from ``secrets`` (never a fixed default)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63) if seed is None else seed)
    return generator


def global_l2_norm(tensors: NamedTensors) -> float:
    """``‖concat(tensors)‖₂`` computed in float64 so large updates do not lose precision."""
    squared = sum(float(t.detach().to(torch.float64).pow(2).sum()) for t in tensors.values())
    return math.sqrt(squared)


def clip_update(tensors: NamedTensors, clip_norm: float) -> tuple[NamedTensors, float]:
    """Scale all tensors together so their global L2 norm is at most ``clip_norm``.

    Returns ``(clipped, original_norm)``; tensors already within the bound come back unchanged (as copies).
    """
    if clip_norm <= 0:
        raise ValueError(f"`clip_norm` must be > 0, got {clip_norm}")
    norm = global_l2_norm(tensors)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: v.detach() * factor for k, v in tensors.items()}, norm


def central_noise_std(noise_multiplier: float, clip_norm: float) -> float:
    """Std of the noise the server adds to the sum of clipped updates: ``σ·C``."""
    return noise_multiplier * clip_norm


def distributed_noise_std(noise_multiplier: float, clip_norm: float, num_parties: int) -> float:
    """Std each of ``num_parties`` adds so that the sum carries ``σ·C``: ``σ·C/√n``.

    Pass the smallest number of parties whose updates will be summed (the secure-aggregation threshold), not
    the number selected: if parties drop out the sum carries less noise than planned, so plan for the worst
    case.
    """
    if num_parties < 1:
        raise ValueError(f"`num_parties` must be >= 1, got {num_parties}")
    return noise_multiplier * clip_norm / math.sqrt(num_parties)


def gaussian_noise_like(tensors: NamedTensors, std: float, generator: torch.Generator) -> NamedTensors:
    """Independent N(0, std²) noise shaped like every tensor, drawn in order of sorted names.

    Drawn on the generator's device in float32 and moved to each tensor's device, so a CPU generator gives the
    same noise whatever device the update lives on.
    """
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    return {
        name: (torch.randn(tensors[name].shape, generator=generator, device=generator.device) * std).to(
            tensors[name].device
        )
        for name in sorted(tensors)
    }


def add_gaussian_noise(tensors: NamedTensors, std: float, generator: torch.Generator) -> NamedTensors:
    """``tensors + N(0, std²)`` in float32 (a party's distributed share, or the server's central noise)."""
    noise = gaussian_noise_like(tensors, std, generator)
    return {k: v.detach().to(torch.float32) + noise[k] for k, v in tensors.items()}


def noised_mean(
    clipped_sum: NamedTensors,
    *,
    noise_multiplier: float,
    clip_norm: float,
    denominator: float,
    generator: torch.Generator,
) -> NamedTensors:
    """Server side of central DP-FedAvg: ``(Σ Δ̂_k + N(0, σ²C²)) / m``.

    ``denominator`` is the number of parties selected for the round (public, fixed before anyone answers), not
    the number that answered: dividing by a data-dependent count would leak it.
    """
    if denominator <= 0:
        raise ValueError(f"`denominator` must be > 0, got {denominator}")
    noisy = add_gaussian_noise(clipped_sum, central_noise_std(noise_multiplier, clip_norm), generator)
    return {k: v / denominator for k, v in noisy.items()}
