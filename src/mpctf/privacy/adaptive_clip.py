"""Adaptive clipping: track a quantile of the update norms privately (Andrew, Thakkar, McMahan, Ramaswamy,
2021, "Differentially Private Learning with Adaptive Clipping").

Each party reports the centred indicator ``b_k − ½`` with ``b_k = 1[‖Δ_k‖ ≤ C]`` beside its update; the
server releases the noised fraction of unclipped updates over the ``m`` selected parties (public) and moves ``C``
geometrically towards the target quantile ``γ``:

    b̄ = (Σ_k (b_k − ½) + N(0, σ_b²) + m/2) / m
    C ← C · exp(−η · (b̄ − γ))

The centring is what the accounting below relies on (it is also how the paper and TF-Privacy do it): adding or
removing one party moves ``Σ_k (b_k − ½)`` by at most ½, so the released count is a Gaussian mechanism with
multiplier ``2σ_b``. An uncentred 0/1 bit would have sensitivity 1 and multiplier ``σ_b`` only. The server adds
``m/2`` back after the noise: ``m`` is public, so that is post-processing. The server also clamps each value it
receives in the clear to ``[−½, ½]``, so a party that reports something else cannot raise the sensitivity.
In distributed mode each of the parties adds its share of the count noise before masking, like the update's.
Composed with the update's Gaussian (multiplier ``z_Δ``) the round is one Gaussian with
``z = (z_Δ⁻² + (2σ_b)⁻²)^(−½)``. Given the total ``z`` the accountant uses, the updates therefore get

    z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)

The paper suggests ``σ_b = m / 20`` and ``η = 0.2``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # torch is imported where noise is drawn: the config schema imports this module
    import torch

_TAG = "adaptive_clipping"


class AdaptiveClipParams(BaseModel):
    """Hyper-parameters of quantile-based adaptive clipping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_quantile: float = Field(0.5, ge=0, le=1)
    learning_rate: float = Field(0.2, gt=0)
    #: Std of the noise on the count of unclipped updates (the paper's σ_b, in count units).
    count_noise_std: float = Field(1.0, gt=0)


def update_noise_multiplier(total_noise_multiplier: float, count_noise_std: float) -> float:
    """``z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)``: the part of the privacy budget left for the updates."""
    if total_noise_multiplier <= 0:
        raise ValueError(
            f"`noise_multiplier` must be > 0 with adaptive clipping, got {total_noise_multiplier}"
        )
    remaining = total_noise_multiplier**-2 - (2 * count_noise_std) ** -2
    if remaining <= 0:
        raise ValueError(
            f"`count_noise_std` {count_noise_std} is too small for noise_multiplier "
            f"{total_noise_multiplier}: it must exceed noise_multiplier / 2 = {total_noise_multiplier / 2}"
        )
    return remaining**-0.5


def geometric_clip_update(
    clip_norm: float, unclipped_fraction: float, target_quantile: float, lr: float
) -> float:
    """``C · exp(−η (b̄ − γ))``."""
    return clip_norm * math.exp(-lr * (unclipped_fraction - target_quantile))


class AdaptiveClipper:
    """Server-side state of adaptive clipping; parties only need :attr:`clip_norm` and :func:`unclipped`."""

    def __init__(
        self, params: AdaptiveClipParams, *, initial_clip_norm: float, total_noise_multiplier: float
    ) -> None:
        if initial_clip_norm <= 0:
            raise ValueError(f"`initial_clip_norm` must be > 0, got {initial_clip_norm}")
        self.params = params
        self.total_noise_multiplier = total_noise_multiplier
        self.update_noise_multiplier = update_noise_multiplier(total_noise_multiplier, params.count_noise_std)
        self.clip_norm = initial_clip_norm

    def update(self, centred_sum: float, num_parties: int, generator: torch.Generator | None) -> float:
        """Fold one round's sum of centred indicators ``Σ (b_k − ½)`` in; returns the new clip norm.

        ``generator`` draws the count noise ``N(0, σ_b²)``; pass ``None`` when the parties already added it
        (distributed mode: the sum arrives noised). ``num_parties`` is the number selected (public).
        """
        if num_parties < 1:
            raise ValueError(f"`num_parties` must be >= 1, got {num_parties}")
        noise = 0.0
        if generator is not None:
            import torch

            noise = float(torch.randn((), generator=generator, device=generator.device))
            noise *= self.params.count_noise_std
        fraction = (centred_sum + noise + num_parties / 2) / num_parties
        self.clip_norm = geometric_clip_update(
            self.clip_norm, fraction, self.params.target_quantile, self.params.learning_rate
        )
        return self.clip_norm

    def state_dict(self) -> dict[str, Any]:
        return {"type": _TAG, "clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("type") != _TAG:
            raise ValueError(f"state of type {state.get('type')!r} cannot be loaded into {_TAG!r}")
        self.clip_norm = float(state["clip_norm"])


def centred_indicator(original_norm: float, clip_norm: float) -> float:
    """Party side: ``1[‖Δ‖ ≤ C] − ½``, sent (summed securely, if at all) beside the update."""
    return 0.5 if original_norm <= clip_norm else -0.5


def bounded_indicator(value: float) -> float:
    """Server side: a centred indicator received in the clear, clamped to ``[−½, ½]`` (its sensitivity bound)."""
    return min(0.5, max(-0.5, float(value)))
