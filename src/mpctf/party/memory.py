"""How much memory one training step of a Llama-style decoder needs, and how much a party has.

The estimate counts bytes from what PyTorch autograd keeps alive during one step; there is no fitted constant.
Notation: ``P`` parameters, ``P_t`` of them trained, ``p`` bytes per parameter (activations share that dtype),
``t`` bytes per trained parameter (``p`` in full fine-tuning; LoRA adapters stay fp32 under PEFT's default),
``b`` micro-batch, ``s`` sequence length, ``h`` hidden, ``i`` intermediate, ``a`` heads, ``g`` key/value heads,
``L`` layers, ``V`` vocabulary.

* weights ``(P − P_t)·p + P_t·t``; gradients ``P_t·t``; AdamW moments ``2·P_t·t`` (kept in the parameter
  dtype); the foreach AdamW step (PyTorch's default on CUDA) allocates one more ``P_t·t`` for ``sqrt(v̂) + ε``.
* activations saved for backward, per token and layer:

  - each RMSNorm's input, promoted to fp32: ``2 · 4h``; its output before the weight, ``2 · p·h``, only when
    the norm weights are trained (full fine-tuning);
  - the input of every trained linear (``h`` for q/k/v, o and gate/up; ``i`` for down). A frozen linear needs
    only its weight to pass the gradient on, so LoRA keeps the inputs of its targets only; when the adapters'
    dtype differs from ``p``, PEFT casts the input once per target, ``t`` bytes each;
  - eager attention: rotated q, and k, v repeated to all heads, ``3·p·h``; the softmax probabilities in fp32
    plus their copy in ``p`` when ``p < 4``: ``4·a·s (+ p·a·s)``, the ``O(a·s²)`` term per sample.
    SDPA/flash kernels instead keep q, k, v at their own head counts, their output (which is o_proj's input
    too) and a log-sum-exp: ``p·h·(2 + 2g/a) + 4a``;
  - SiLU MLP: gate, ``silu(gate)`` and up, ``3·p·i``.

  So in fp32 with eager attention full fine-tuning keeps ``4·(10h + 4i + a·s)`` bytes per token and layer, LoRA
  on q/v ``4·(6h + 3i + a·s)``. Gradient checkpointing keeps each layer's input ``p·h`` plus one layer's worth.
* logits: the loss works in fp32 on ``b·s·V`` values; when backward starts the log-probabilities, their gradient
  and the logits' gradient are alive together: ``3 · 4·b·s·V``. For small models with big vocabularies
  (SmolLM2-135M: V = 49152, h = 576) this is the largest single activation term.
* attention workspace: one eager layer at a time holds two fp32 score-sized buffers, ``2 · 4·b·a·s²``, in its
  forward or backward, never while the logits are alive.

Peak: backward allocates the gradients while it frees the activations, and ``zero_grad(set_to_none=True)``
frees them before the next forward, so the two phases do not add up::

    total = weights + optimizer_state + max(activations + max(logits, attention_workspace),
                                            gradients + optimizer_step)

Assumed: the caller drops the model outputs before ``backward`` (``loss = model(**batch).loss``; keeping
``outputs.logits`` costs one more ``b·s·V`` copy), passes ``use_cache=False`` (a KV cache keeps k and v), and
pads no sequence (a padding mask makes HF repeat k, v for SDPA). Not counted: LoRA's rank-``r``
intermediates, the MLP's backward temporaries, the first layer's input (it needs no gradient under LoRA),
allocator slack and the CUDA context; ``safety_factor`` in the ``memory`` chunking covers them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import psutil
import torch

FP32 = 4
#: The linear layers of a Llama block: which activation each reads, and that activation's width.
LINEAR_INPUTS = {
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "o_proj": "attn_out",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
    "down_proj": "mlp_act",
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step, by kind; :attr:`total` is the estimated peak (see the module docstring)."""

    weights: int
    gradients: int
    optimizer_state: int
    optimizer_step: int
    activations: int
    logits: int
    attention_workspace: int

    @property
    def total(self) -> int:
        forward_backward = self.activations + max(self.logits, self.attention_workspace)
        step = self.gradients + self.optimizer_step
        return self.weights + self.optimizer_state + max(forward_backward, step)

    @property
    def training_overhead(self) -> int:
        """What training adds on top of the loaded weights (what the benchmark measures)."""
        return self.total - self.weights


@dataclass(frozen=True)
class _Block:
    """The shape of one decoder block at one sequence length."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    seq_len: int

    def width(self, activation: str) -> int:
        return self.intermediate if activation == "mlp_act" else self.hidden


def estimate_training_memory(
    *,
    n_params: int,
    n_trainable: int,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    intermediate_size: int,
    num_heads: int,
    seq_len: int,
    micro_batch: int,
    param_bytes: int,
    mode: Literal["full", "lora"],
    optimizer: Literal["adamw", "sgd"] = "adamw",
    gradient_checkpointing: bool = False,
    num_kv_heads: int | None = None,
    lora_targets: Collection[str] = ("q_proj", "v_proj"),
    adapter_bytes: int = FP32,
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "eager",
) -> MemoryEstimate:
    """Estimate the peak memory of one training step of a Llama-style decoder (formulas: module docstring).

    ``mode="lora"`` trains adapters (``adapter_bytes`` per parameter) on ``lora_targets``, PEFT's default for
    Llama being q_proj and v_proj; ``num_kv_heads`` defaults to ``num_heads``; ``"sgd"`` is plain SGD
    without momentum (no optimizer state).
    """
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    _check_positive(
        n_params=n_params,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=vocab_size,
        intermediate_size=intermediate_size,
        num_heads=num_heads,
        num_kv_heads=kv_heads,
        seq_len=seq_len,
        micro_batch=micro_batch,
        param_bytes=param_bytes,
        adapter_bytes=adapter_bytes,
    )
    if not 0 <= n_trainable <= n_params:
        raise ValueError(f"`n_trainable` must be in [0, n_params={n_params}], got {n_trainable}")
    block = _Block(hidden_size, intermediate_size, num_heads, kv_heads, seq_len)
    full = mode == "full"
    trained_bytes = param_bytes if full else adapter_bytes
    eager = attn_implementation == "eager"
    per_layer = (
        _norm_bytes(block, param_bytes, norms_trained=full)
        + _linear_input_bytes(block, param_bytes, mode, lora_targets, adapter_bytes, eager=eager)
        + _attention_bytes(block, param_bytes, eager=eager)
        + 3 * param_bytes * intermediate_size
    )
    tokens = micro_batch * seq_len
    checkpointed = num_layers * param_bytes * hidden_size + per_layer
    saved = tokens * (checkpointed if gradient_checkpointing else num_layers * per_layer)
    # Final norm: its fp32 input; in full fine-tuning also its output and the head's input.
    head = FP32 * hidden_size + (2 * param_bytes * hidden_size if full else 0)
    moments, step = (2, 1) if optimizer == "adamw" else (0, 0)
    eager_workspace = 2 * FP32 * micro_batch * num_heads * seq_len**2
    return MemoryEstimate(
        weights=(n_params - n_trainable) * param_bytes + n_trainable * trained_bytes,
        gradients=n_trainable * trained_bytes,
        optimizer_state=moments * n_trainable * trained_bytes,
        optimizer_step=step * n_trainable * trained_bytes,
        activations=saved + tokens * head,
        logits=3 * FP32 * tokens * vocab_size,
        attention_workspace=eager_workspace if eager else 0,
    )


def _norm_bytes(block: _Block, p: int, *, norms_trained: bool) -> int:
    """Two RMSNorms per block: the fp32 input each; the normalized output too when the weights train."""
    return 2 * FP32 * block.hidden + (2 * p * block.hidden if norms_trained else 0)


def _linear_input_bytes(
    block: _Block, p: int, mode: str, targets: Collection[str], adapter_bytes: int, *, eager: bool
) -> int:
    """Inputs kept for the weight gradients of the trained linears (one copy per distinct input)."""
    if mode == "full":
        inputs = set(LINEAR_INPUTS.values())
    elif mode == "lora":
        unknown = sorted(set(targets) - set(LINEAR_INPUTS))
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; a Llama block has {sorted(LINEAR_INPUTS)}")
        if adapter_bytes != p:  # PEFT casts the input to the adapter dtype in each target: a copy per target
            return adapter_bytes * sum(block.width(LINEAR_INPUTS[t]) for t in set(targets))
        inputs = {LINEAR_INPUTS[t] for t in targets}
    else:
        raise ValueError(f"`mode` must be 'full' or 'lora', got {mode!r}")
    if not eager:
        # SDPA/flash kernels write their output in (batch, seq, heads, dim) order, so o_proj's input is that
        # same storage, already counted with the attention kernel.
        inputs.discard("attn_out")
    return p * sum(block.width(a) for a in inputs)


def _attention_bytes(block: _Block, p: int, *, eager: bool) -> int:
    h, a, s = block.hidden, block.heads, block.seq_len
    if eager:
        probs_copy = p * a * s if p < FP32 else 0
        return 3 * p * h + FP32 * a * s + probs_copy
    kv = 2 * p * h * block.kv_heads // a
    return 2 * p * h + kv + FP32 * a


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1, got {value}")


def available_memory(device: str) -> int:
    """Free bytes for training on ``device``: ``"cpu"``, ``"cuda"`` (every visible GPU), ``"cuda:1"`` or
    ``"cuda:0,1"`` (the party's GPUs).

    For GPUs it is the least free memory among them (``cudaMemGetInfo``), since data-parallel training puts the
    same model and micro-batch on each; for the CPU it is the RAM the OS can hand out without swapping, shared
    by all of the party's processes.
    """
    if device == "cpu":
        return int(psutil.virtual_memory().available)
    return min(int(torch.cuda.mem_get_info(i)[0]) for i in _cuda_indices(device))


def _cuda_indices(device: str) -> list[int]:
    kind, _, ids = device.partition(":")
    if kind != "cuda":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'cuda:N,M', got {device!r}")
    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError(f"device {device!r} asked for, but no CUDA device is visible")
    if not ids:
        return list(range(count))
    try:
        indices = [int(x) for x in ids.split(",")]
    except ValueError:
        raise ValueError(f"device {device!r}: GPU indices must be integers") from None
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise ValueError(f"device {device!r}: no GPU {bad[0]} (visible: 0..{count - 1})")
    return indices
