"""Fixtures shared by the strategy tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from mpctf.messages import Update


def _make_update(
    party: str,
    samples: int = 1,
    round_num: int = 1,
    tokens: int = 1,
    metrics: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
    **tensors: Any,
) -> Update:
    """An update whose tensors are given as lists: ``upd("a", samples=2, w=[1.0, 0.0])``."""
    return Update(
        party,
        round_num,
        {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()},
        num_samples=samples,
        num_tokens=tokens,
        metrics=metrics or {},
        extra={k: torch.as_tensor(v, dtype=torch.float32) for k, v in (extra or {}).items()},
    )


@pytest.fixture
def upd() -> Callable[..., Update]:
    return _make_update
