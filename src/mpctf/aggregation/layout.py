"""Placing a party hook's reference tensors (the global state, control variates) next to the parameters."""

from __future__ import annotations

import torch


def laid_out_like(full: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``full`` on ``like``'s device (in ``dtype``, else ``like``'s), split the way ``like`` is when it is a
    ``DTensor`` (a parameter or gradient of an FSDP-sharded model), so the two combine element by element.

    Every rank of a sharded party holds the whole reference, so each keeps its own slice of it: no communication.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    local = full.detach().to(like.device, dtype or like.dtype)
    if isinstance(like, DTensor):
        return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)
    return local
