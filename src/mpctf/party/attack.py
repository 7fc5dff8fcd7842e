"""SIMULATION ONLY: poisoned updates for measuring robust aggregation (``parties[].attack`` in the config).

Real deployments never set this; a malicious party would not ask. It exists so that benchmarks and tests can
reproduce the two classic model-poisoning attacks against which ``krum``, ``median``, ``trimmed_mean`` and
``norm_bounded`` are designed: the sign-flipping attack (the update reversed, optionally amplified) and the
scaling attack (the update amplified), as in Blanchard et al., 2017 and Yin et al., 2018.
"""

from __future__ import annotations

from mpctf.messages import NamedTensors


def poison_update(delta: NamedTensors, *, kind: str, factor: float) -> NamedTensors:
    """``-factor · delta`` for ``sign_flip``, ``factor · delta`` for ``scale``; a new dict, inputs untouched."""
    if kind == "sign_flip":
        scale = -factor
    elif kind == "scale":
        scale = factor
    else:
        raise ValueError(f"unknown attack kind {kind!r}; known: scale, sign_flip")
    return {k: t * scale for k, t in delta.items()}
