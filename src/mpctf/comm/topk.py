"""The ``topk`` codec: magnitude top-k sparsification with error feedback."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import field_validator

from mpctf.comm.base import CODECS, Codec, CodecParams
from mpctf.comm.params import check_interval
from mpctf.comm.per_tensor import decode_each, encode_each, expect_numel
from mpctf.messages import NamedTensors


class TopKParams(CodecParams):
    """``fraction`` of each tensor's entries sent per round (at least one)."""

    fraction: float = 0.01

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        return check_interval("fraction", value, 0.0, 1.0, low_open=True)


def top_k_count(numel: int, fraction: float) -> int:
    """``k = max(1, round(fraction · n))`` for a non-empty tensor of ``n`` entries, capped at ``n``."""
    return min(numel, max(1, round(fraction * numel))) if numel else 0


def select_top_k(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (ascending: they compress better) and values of the ``k`` largest-magnitude entries."""
    indices = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
    return indices, flat[indices]


def index_dtype(numel: int) -> torch.dtype:
    """int32 indices where they fit, halving their bytes; int64 beyond 2³¹ entries."""
    return torch.int32 if numel <= torch.iinfo(torch.int32).max else torch.int64


@CODECS.register("topk")
class TopKCodec(Codec):
    """Send the ``k`` largest-magnitude entries of each tensor; carry the rest over to the next round.

    References: Stich, Cordonnier & Jaggi (2018), "Sparsified SGD with Memory", NeurIPS; Lin et al. (2018),
    "Deep Gradient Compression", ICLR.

    Rule (per tensor, round ``t``, residual ``e₀ = 0``): ``a_t = x_t + e_{t−1}``; ``S_t`` = indices of the
    ``k`` largest ``|a_t|``; send ``m_t = a_t`` on ``S_t`` (zero elsewhere); keep ``e_t = a_t − m_t``. So
    ``m_t + e_t = x_t + e_{t−1}`` exactly and ``Σ_t m_t + e_T = Σ_t x_t``: nothing is lost, only delayed.
    The residual lives in the caller's ``state`` (one dict per party, the same every round) in float32, on the
    tensor's device. Values travel in the tensor's dtype; for 16-bit tensors their rounding error also goes
    into the residual. Encoded form: ``name::idx`` (int32, or int64 past 2³¹ entries) and ``name::val``, so a
    later codec (``int8``, ``fp16``) compresses the values and leaves the indices alone.
    """

    sparsifies = True

    Params = TopKParams
    params: TopKParams
    keeps_state = True

    def encode(self, tensors: NamedTensors, state: dict[str, Any]) -> tuple[NamedTensors, dict[str, Any]]:
        residuals: NamedTensors = {}

        def encode_one(name: str, tensor: torch.Tensor) -> tuple[NamedTensors, dict[str, Any]]:
            accumulated = _with_residual(name, tensor, state.get(name))
            flat = accumulated.view(-1)
            indices, values = select_top_k(flat, top_k_count(flat.numel(), self.params.fraction))
            sent = values.to(tensor.dtype)
            flat[indices] -= sent.to(flat.dtype)
            residuals[name] = accumulated
            return {"idx": indices.to(index_dtype(flat.numel())), "val": sent}, {}

        encoded, infos = encode_each(tensors, encode_one)
        # Only a complete encoding moves the residuals on; a failed one leaves the state as it was.
        state.update(residuals)
        return encoded, {"tensors": infos}

    def decode(self, tensors: NamedTensors, header: dict[str, Any]) -> NamedTensors:
        return decode_each(tensors, header["tensors"], ("idx", "val"), _scatter)


def _with_residual(name: str, tensor: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """``x_t + e_{t−1}`` as a fresh float32 (float64 for float64 input) tensor: the next residual."""
    work = torch.promote_types(tensor.dtype, torch.float32)
    # Contiguous, so that the flat view the caller edits in place is this very tensor.
    accumulated = torch.empty_like(tensor, dtype=work, memory_format=torch.contiguous_format).copy_(
        tensor.detach()
    )
    if residual is not None:
        if residual.shape != tensor.shape:
            raise ValueError(
                f"error-feedback residual of {name!r} has shape {tuple(residual.shape)}, "
                f"the tensor has {tuple(tensor.shape)}; the codec state belongs to another model"
            )
        accumulated += residual.to(accumulated)
    # A NaN kept in the residual would poison every later round; refuse before the state is touched.
    if not bool(torch.isfinite(accumulated).all()):
        raise ValueError(f"tensor {name!r} (plus its residual) contains NaN or Inf")
    return accumulated


def _scatter(
    parts: NamedTensors, shape: tuple[int, ...], dtype: torch.dtype, info: dict[str, Any]
) -> torch.Tensor:
    indices, values = parts["idx"].long(), parts["val"]
    numel = math.prod(shape)
    expect_numel("top-k values", values, indices.numel())
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
        raise ValueError(f"top-k indices fall outside a tensor of {numel} entries")
    dense = torch.zeros(numel, dtype=dtype, device=values.device)
    dense[indices] = values.to(dtype)
    return dense.reshape(shape)
