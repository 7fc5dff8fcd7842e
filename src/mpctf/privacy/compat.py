"""Which combinations of strategy, codecs, training mode and privacy mechanisms cannot work together, in sentences.

Called once at config validation, so a run that could only fail or silently lose its guarantee never starts.
Every rule reads properties that the parts declare, never their names: a strategy's ``aggregates_by_mean`` and
``buffers_updates``, a codec's ``sparsifies`` and ``integer_bits``, a training mode's ``per_example_gradients``,
and the traits of each registered privacy stage (:func:`mechanisms`). A strategy or codec added later is judged
by what it declares.
"""

from __future__ import annotations

from typing import Any, Protocol

from mpctf.privacy.config import PrivacyConfig
from mpctf.privacy.stages.base import MechanismTraits


# What the rules read of a strategy, a codec and a training mode class: their declared properties only.
class Strategy(Protocol):
    registered_name: str
    buffers_updates: bool
    aggregates_by_mean: bool


class Codec(Protocol):
    registered_name: str
    sparsifies: bool
    integer_bits: int | None


class TrainingMode(Protocol):
    registered_name: str
    per_example_gradients: bool


def mechanisms() -> dict[str, MechanismTraits]:
    """The traits every registered privacy stage declares, by its ``privacy:`` section."""
    from mpctf.privacy.stages import STAGES

    return {name: STAGES.get(name).traits for name in STAGES}


def _enabled(config: PrivacyConfig) -> dict[str, MechanismTraits]:
    return {name: traits for name, traits in mechanisms().items() if getattr(config, name) is not None}


def incompatibilities(
    strategy: type[Strategy],
    codecs: list[type[Codec]],
    privacy: dict[str, Any] | PrivacyConfig,
    training_mode: type[TrainingMode] | None = None,
) -> list[str]:
    """One sentence per combination that cannot work; empty when everything fits."""
    config = privacy if isinstance(privacy, PrivacyConfig) else PrivacyConfig.model_validate(privacy)
    hiding = [t for t in _enabled(config).values() if t.hides_updates]
    hidden = hiding[0] if hiding else None
    name = strategy.registered_name
    problems: list[str] = []
    if len(hiding) > 1:
        problems.append(
            f"{' and '.join(t.title for t in hiding)} each hide individual updates from the server; enable only "
            "one of them."
        )
    if hidden is not None and strategy.buffers_updates:
        problems.append(
            f"strategy {name!r} needs every individual update, but with {hidden.title} the server only ever "
            "sees their sum."
        )
    elif (hidden is not None or config.client_dp is not None) and not strategy.aggregates_by_mean:
        what = hidden.title if hidden is not None else "client-level DP"
        problems.append(
            f"with {what} the server aggregates one mean update per round, which strategy {name!r} cannot use; "
            "choose a strategy that aggregates by a weighted mean (fedavg, fedprox, fedavgm, fedadam, ...)."
        )
    if hidden is not None:
        problems.extend(_codec_problems(hidden, codecs, config))
    problems.extend(_dp_problems(config, hidden))
    if any(traits.audits_dp for traits in _enabled(config).values()):
        problems.extend(_audit_problems(config))
    if config.sample_dp is not None and training_mode is not None and not training_mode.per_example_gradients:
        problems.append(
            f"sample-level DP-SGD needs Opacus's per-example gradients of the trainable layers, which training "
            f"mode {training_mode.registered_name!r} does not provide; use training.mode 'lora'."
        )
    return problems


def _audit_problems(config: PrivacyConfig) -> list[str]:
    assert config.audit is not None
    if config.audit.canary_rows and config.sample_dp is None:
        return [
            "privacy.audit.canary_rows audits sample-level DP-SGD's ledger; enable privacy.sample_dp or set "
            "canary_rows to 0."
        ]
    if not config.audit.canary_rows and config.client_dp is None:
        return [
            "the empirical privacy audit checks client-level DP's ledger with canary updates, or DP-SGD's with "
            "canary rows; enable privacy.client_dp, or privacy.sample_dp with privacy.audit.canary_rows."
        ]
    return []


def _codec_problems(hidden: MechanismTraits, codecs: list[type[Codec]], config: PrivacyConfig) -> list[str]:
    """Under a hiding mechanism the update travels as its masked or encrypted vector, not through the codecs,
    except that an exact ring can take its precision from one integer quantiser."""
    problems = []
    for codec in codecs:
        if codec.sparsifies:
            problems.append(
                f"codec {codec.registered_name!r} keeps different coordinates at each party, so a sum over them "
                f"under {hidden.title} is meaningless (and masking or encryption would make it dense again)."
            )
    rest = [c for c in codecs if not c.sparsifies]
    integer = [c for c in rest if c.integer_bits is not None]
    if hidden.exact_on_integer_codes and len(rest) == 1 and integer:
        dp = config.client_dp
        if dp is not None and dp.mode == "distributed":
            problems.append(
                f"codec {integer[0].registered_name!r} would round each party's noised share to "
                f"{integer[0].integer_bits} bits before the secure sum, which the Gaussian accounting does not "
                "cover; remove the uplink codec with distributed client DP."
            )
        return problems
    if rest:
        allowed = " (one integer quantiser, int8 or int4, sets the ring's precision)"
        problems.append(
            f"with {hidden.title} a party sends its update as a masked or encrypted vector instead of through "
            f"communication.uplink ({', '.join(c.registered_name for c in rest)}); remove the uplink codecs"
            f"{allowed if hidden.exact_on_integer_codes else ''}."
        )
    return problems


def _dp_problems(config: PrivacyConfig, hidden: MechanismTraits | None) -> list[str]:
    dp = config.client_dp
    if dp is None:
        return []
    problems = []
    if dp.mode == "central" and hidden is not None:
        problems.append(
            f"central client-level DP has the server add noise to the exact sum, which {hidden.title} is meant "
            "to hide from it; set client_dp.mode to 'distributed'."
        )
    if dp.mode == "distributed" and hidden is None:
        problems.append(
            "distributed DP noise without secure aggregation or homomorphic encryption leaves each update "
            "visible to the server with only 1/√n of the noise; use client_dp.mode 'central' or hide updates."
        )
    if dp.adaptive_clipping is not None and hidden is not None and not hidden.carries_clip_count:
        problems.append(
            f"adaptive clipping rides its count inside the hidden sum, which {hidden.title} does not carry yet; "
            "use a fixed clip_norm."
        )
    return problems
