"""Hypothesis strategies shared by the codec tests, handed out as session fixtures (tests import only mpctf).

Tensors are drawn as a shape, a dtype, a seed and a magnitude rather than element by element: that keeps each
example cheap while still covering empty and 0-dim tensors, ragged last blocks and all-zero stretches.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
NAMES = (
    "w",
    "model.layers.0.self_attn.q_proj.lora_A.weight",
    "model.layers.0.self_attn.q_proj.lora_B.weight",
)

_shapes = st.one_of(
    st.lists(st.integers(0, 6), max_size=3),  # small, including 0-dim scalars and empty tensors
    st.integers(1, 300).map(lambda n: [n]),  # long enough for several blocks and a ragged tail
)


@st.composite
def _float_tensors(draw: st.DrawFn, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    shape = draw(_shapes)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    magnitude = draw(st.sampled_from([0.0, 1e-4, 1e-2, 1.0, 100.0]))
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * magnitude
    zeroed = draw(st.integers(0, x.numel()))  # an all-zero stretch gives all-zero blocks
    x.view(-1)[:zeroed] = 0.0
    return x.to(draw(st.sampled_from(dtypes)))


@pytest.fixture(scope="session")
def float_tensors() -> st.SearchStrategy[torch.Tensor]:
    """One tensor of any floating dtype."""
    return _float_tensors(FLOAT_DTYPES)


@pytest.fixture(scope="session")
def wide_float_tensors() -> st.SearchStrategy[torch.Tensor]:
    """One float32 or float64 tensor (where a bound is stated before any 16-bit rounding)."""
    return _float_tensors((torch.float32, torch.float64))


@pytest.fixture(scope="session")
def named_float_tensors() -> st.SearchStrategy[dict[str, torch.Tensor]]:
    """One to three named tensors of any floating dtype."""
    return st.dictionaries(st.sampled_from(NAMES), _float_tensors(FLOAT_DTYPES), min_size=1, max_size=3)
