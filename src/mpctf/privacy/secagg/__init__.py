"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020): the server learns only the sum.

Pure state machines: :class:`SecAggParty` and :class:`SecAggServer` exchange dicts that
:func:`~mpctf.privacy.secagg.wire.dumps` turns into bytes; :func:`secure_sum` runs a whole round in memory.
"""

from __future__ import annotations

import importlib
from typing import Any

from mpctf.privacy.secagg.params import SecAggParams

__all__ = ["SecAggParams", "SecAggParty", "SecAggRun", "SecAggServer", "secure_sum"]

# The protocol pulls in torch and the crypto libraries; the config schema needs only SecAggParams.
_LAZY = {
    "SecAggParty": "mpctf.privacy.secagg.party",
    "SecAggServer": "mpctf.privacy.secagg.server",
    "SecAggRun": "mpctf.privacy.secagg.simulate",
    "secure_sum": "mpctf.privacy.secagg.simulate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
