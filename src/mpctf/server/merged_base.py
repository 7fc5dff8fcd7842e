"""The server's side of strategies whose global LoRA factors are added into the base weights every round (flora).

Such a strategy's global state is the round's stack ``(A, B)`` at rank ``Σ r_k``, not an adapter the server's
model can hold: parties add ``B A`` into their frozen base weights and train a fresh adapter. The server does the
same to its own model so that what it evaluates and saves is the federated model ``W₀ + Σ_τ B_τ A_τ``, and keeps
the sum of what it added per module so a checkpoint can hand the trained weights to a user.
"""

from __future__ import annotations

import torch

from mpctf.aggregation.lora import A_SUFFIX, B_SUFFIX, is_lora_key, lora_modules, split_lora
from mpctf.messages import NamedTensors
from mpctf.model.bundle import ModelBundle


class MergedBase:
    """Adds each round's global LoRA factors into the server model's base weights, once per round."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        #: ``module path -> Σ B A`` added to that module's base weight so far (float32, the weight's shape).
        self.delta: NamedTensors = {}

    def absorb(self, global_state: NamedTensors) -> NamedTensors:
        """Merge the state's LoRA factors into the base; return the model-shaped state to evaluate and save: the
        model's own adapter with ``B = 0`` (it adds nothing on top of the merged base) and the state's other
        tensors."""
        lora, rest = split_lora(global_state)
        self.bundle.mode.merge_into_base(self.bundle.model, lora)
        for m in lora_modules(lora):
            product = lora[m + B_SUFFIX].float() @ lora[m + A_SUFFIX].float()
            self.delta[m] = self.delta[m] + product if m in self.delta else product
        own = self.bundle.mode.get_state(self.bundle.model)
        return {
            k: (torch.zeros_like(v) if k.endswith(B_SUFFIX) else v) if is_lora_key(k) else rest.get(k, v)
            for k, v in own.items()
        }
