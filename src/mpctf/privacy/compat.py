"""Which combinations of strategy, codecs and privacy mechanisms cannot work together, in plain sentences.

Called once at config validation, so a run that could only fail or silently lose its guarantee never starts.
The codec tables name codecs by what they do; a codec added later joins the table that fits it.
"""

from __future__ import annotations

from typing import Any

from mpctf.privacy.config import PrivacyConfig

#: Strategies that combine updates non-linearly (order statistics, distances between updates).
NONLINEAR_STRATEGIES = frozenset(
    {"fedmedian", "median", "trimmed_mean", "krum", "multikrum", "bulyan", "geomed"}
)
#: Strategies whose server step is only a weighted mean of the updates (so HE parties can decrypt the result).
WEIGHTED_MEAN_STRATEGIES = frozenset({"fedavg", "fedprox"})
#: Codecs that keep a party-specific subset of coordinates.
SPARSIFYING_CODECS = frozenset({"topk", "top_k", "randk", "rand_k", "sparsify"})


def incompatibilities(
    strategy_name: str,
    strategy_buffers_updates: bool,
    codec_names: list[str],
    privacy: dict[str, Any] | PrivacyConfig,
) -> list[str]:
    """One sentence per combination that cannot work; empty when everything fits."""
    config = privacy if isinstance(privacy, PrivacyConfig) else PrivacyConfig.model_validate(privacy)
    hidden = _hiding_mechanism(config)
    problems: list[str] = []
    if config.secure_aggregation is not None and config.homomorphic_encryption is not None:
        problems.append(
            "secure aggregation and homomorphic encryption both hide individual updates from the server; "
            "enable only one of them."
        )
    if hidden and (strategy_buffers_updates or strategy_name in NONLINEAR_STRATEGIES):
        problems.append(
            f"strategy {strategy_name!r} needs every individual update, but with {hidden} the server only "
            "ever sees their sum."
        )
    if config.homomorphic_encryption is not None and strategy_name not in WEIGHTED_MEAN_STRATEGIES:
        problems.append(
            f"with homomorphic encryption the server never sees even the aggregate in the clear, so strategy "
            f"{strategy_name!r} cannot post-process it; use one of {sorted(WEIGHTED_MEAN_STRATEGIES)}."
        )
    for codec in codec_names:
        if hidden and codec in SPARSIFYING_CODECS:
            problems.append(
                f"codec {codec!r} keeps different coordinates at each party, so a {hidden} sum over them is "
                "meaningless (and masking or encryption would make the update dense again)."
            )
    problems.extend(_dp_problems(config, strategy_name, strategy_buffers_updates, hidden))
    return problems


def _hiding_mechanism(config: PrivacyConfig) -> str | None:
    if config.secure_aggregation is not None:
        return "secure aggregation"
    if config.homomorphic_encryption is not None:
        return "homomorphic encryption"
    return None


def _dp_problems(config: PrivacyConfig, strategy: str, buffers: bool, hidden: str | None) -> list[str]:
    dp = config.client_dp
    if dp is None:
        return []
    problems = []
    if dp.mode == "central" and hidden:
        problems.append(
            f"central client-level DP has the server add noise to the exact sum, which {hidden} is meant to "
            "hide from it; set client_dp.mode to 'distributed'."
        )
    if dp.mode == "distributed" and not hidden:
        problems.append(
            "distributed DP noise without secure aggregation or homomorphic encryption leaves each update "
            "visible to the server with only 1/√n of the noise; use client_dp.mode 'central' or hide updates."
        )
    if buffers or strategy in NONLINEAR_STRATEGIES:
        problems.append(
            f"client-level DP calibrates its noise to a sum of clipped updates, but strategy {strategy!r} "
            "does not aggregate by a sum."
        )
    if dp.adaptive_clipping is not None and config.homomorphic_encryption is not None:
        problems.append(
            "adaptive clipping needs the server to read the noised count of unclipped updates, which "
            "homomorphic encryption hides; use a fixed clip_norm."
        )
    return problems


#: Strategies whose server step is a function of the weighted mean of the updates only, so the round loop can
#: hand them one mean computed from a secure sum, a decrypted CKKS aggregate, or a DP-noised sum.
MEAN_DELTA_STRATEGIES = frozenset(
    {"fedavg", "fedprox", "fedavgm", "fedit", "ffa_lora", "fedadam", "fedyogi", "fedadagrad"}
)
#: Training modes whose trainable layers Opacus computes per-example gradients for in its ``hooks`` mode.
SAMPLE_DP_MODES = frozenset({"lora"})


def unsupported_in_rounds(
    strategy_name: str, codec_names: list[str], privacy: dict[str, Any] | PrivacyConfig, training_mode: str
) -> list[str]:
    """What the round loop does not support with these mechanisms (as opposed to what cannot work at all).

    The loop gives the strategy one aggregated update per round when updates are hidden or client DP is on, so
    the strategy must depend on the mean update only; it sends the masked or encrypted vector in place of the
    codec-encoded update.
    """
    config = privacy if isinstance(privacy, PrivacyConfig) else PrivacyConfig.model_validate(privacy)
    hidden = _hiding_mechanism(config)
    problems: list[str] = []
    if (hidden or config.client_dp is not None) and strategy_name not in MEAN_DELTA_STRATEGIES:
        what = hidden or "client-level DP"
        problems.append(
            f"with {what} the server aggregates one mean update per round, which strategy {strategy_name!r} "
            f"cannot use; choose one of {sorted(MEAN_DELTA_STRATEGIES)}."
        )
    if hidden and codec_names:
        problems.append(
            f"with {hidden} a party sends its update as a masked or encrypted vector instead of through "
            f"communication.uplink ({', '.join(codec_names)}); remove the uplink codecs."
        )
    if config.sample_dp is not None and training_mode not in SAMPLE_DP_MODES:
        problems.append(
            f"sample-level DP-SGD is wired for training.mode {sorted(SAMPLE_DP_MODES)} (Opacus per-example "
            f"gradients of LoRA layers), not {training_mode!r}."
        )
    return problems
