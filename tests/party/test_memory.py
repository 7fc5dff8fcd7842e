"""Training-memory estimator against hand-computed bytes on tiny configurations; free-memory probing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mpctf.party import memory
from mpctf.party.memory import estimate_training_memory

# h=4, i=8, a=2 heads, g=1 kv head, s=3, b=2 (6 tokens), L=2, V=10
TINY = dict(
    hidden_size=4,
    intermediate_size=8,
    num_heads=2,
    num_kv_heads=1,
    seq_len=3,
    micro_batch=2,
    num_layers=2,
    vocab_size=10,
)


def test_full_fp32_eager():
    est = estimate_training_memory(n_params=100, n_trainable=100, param_bytes=4, mode="full", **TINY)
    # per token and layer: norms 2*4*4 + 2*4*4 = 64; linear inputs 4*(3*4 + 8) = 80;
    # attention 3*4*4 + 4*2*3 = 72; MLP 3*4*8 = 96 -> 312; 6 tokens x 2 layers -> 3744
    # final norm per token 4*4 + 2*4*4 = 48 -> 288
    assert est.activations == 3744 + 288
    assert est.logits == 3 * 4 * 6 * 10
    assert est.attention_workspace == 2 * 4 * 2 * 2 * 3**2
    assert (est.weights, est.gradients, est.optimizer_state, est.optimizer_step) == (400, 400, 800, 400)
    # 400 + 800 + max(4032 + max(720, 288), 400 + 400)
    assert est.total == 400 + 800 + 4752
    assert est.training_overhead == 800 + 4752


def test_gradient_phase_wins_when_the_model_dominates():
    est = estimate_training_memory(n_params=1000, n_trainable=1000, param_bytes=4, mode="full", **TINY)
    # activations + logits = 4752 < gradients + AdamW's step buffer = 8000
    assert est.total == 4000 + 8000 + 8000


def test_lora_fp32_keeps_only_the_adapted_inputs():
    est = estimate_training_memory(n_params=100, n_trainable=10, param_bytes=4, mode="lora", **TINY)
    # norms 2*4*4 = 32; q/v share one input 4*4 = 16; attention 72; MLP 96 -> 216 x 12 = 2592; final norm 16 x 6
    assert est.activations == 2592 + 96
    assert (est.weights, est.gradients, est.optimizer_state) == (400, 40, 80)
    assert est.total == 400 + 80 + 2688 + 720


def test_lora_bf16_casts_each_target_input_to_fp32():
    est = estimate_training_memory(n_params=100, n_trainable=10, param_bytes=2, mode="lora", **TINY)
    # norms 2*4*4 = 32; two fp32 input copies 2*4*4 = 32; attention 3*2*4 + 4*2*3 + 2*2*3 = 60;
    # MLP 3*2*8 = 48 -> 172 x 12 = 2064; final norm 16 x 6 = 96
    assert est.activations == 2064 + 96
    assert est.weights == 90 * 2 + 10 * 4  # frozen base in bf16, adapters in fp32
    assert est.gradients == 40


def test_lora_targets_decide_the_saved_inputs():
    base = dict(n_params=100, n_trainable=10, param_bytes=4, mode="lora", **TINY)
    qv = estimate_training_memory(**base).activations
    down = estimate_training_memory(**base, lora_targets=("down_proj",)).activations
    assert down - qv == 12 * 4 * (8 - 4)  # the down projection reads i=8 wide activations instead of h=4


def test_sdpa_keeps_kernel_output_instead_of_probabilities():
    est = estimate_training_memory(
        n_params=100, n_trainable=100, param_bytes=4, mode="full", attn_implementation="sdpa", **TINY
    )
    # attention: q 16 + out 16 + k, v at 1 of 2 heads 2*16/2 = 16 + lse 4*2 = 56; linear inputs without
    # o_proj's (it is the kernel output) 4*(4 + 4 + 8) = 64; norms 64; MLP 96 -> 280 x 12 = 3360
    assert est.activations == 3360 + 288
    assert est.attention_workspace == 0


def test_gradient_checkpointing_keeps_layer_inputs_and_one_layer():
    est = estimate_training_memory(
        n_params=100, n_trainable=100, param_bytes=4, mode="full", gradient_checkpointing=True, **TINY
    )
    assert est.activations == 6 * (2 * 4 * 4 + 312) + 288


def test_sgd_has_no_optimizer_state():
    est = estimate_training_memory(
        n_params=100, n_trainable=100, param_bytes=4, mode="full", optimizer="sgd", **TINY
    )
    assert (est.optimizer_state, est.optimizer_step) == (0, 0)


def test_smollm2_per_token_formulas():
    shape = dict(
        hidden_size=576,
        intermediate_size=1536,
        num_heads=9,
        num_kv_heads=3,
        num_layers=30,
        vocab_size=49152,
        seq_len=256,
        micro_batch=4,
    )
    full = estimate_training_memory(
        n_params=134_515_008, n_trainable=134_515_008, param_bytes=4, mode="full", **shape
    )
    assert full.activations == 1024 * (30 * 4 * (10 * 576 + 4 * 1536 + 9 * 256) + 12 * 576)
    lora = estimate_training_memory(
        n_params=134_515_008, n_trainable=460_800, param_bytes=4, mode="lora", **shape
    )
    assert lora.activations == 1024 * (30 * 4 * (6 * 576 + 3 * 1536 + 9 * 256) + 4 * 576)
    assert lora.logits == 12 * 1024 * 49152


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"n_trainable": 101}, "`n_trainable` must be in"),
        ({"mode": "qlora"}, "`mode` must be 'full' or 'lora'"),
        ({"mode": "lora", "lora_targets": ("qproj",)}, "unknown LoRA target"),
        ({"seq_len": 0}, "`seq_len` must be >= 1"),
    ],
)
def test_invalid_inputs(override, message):
    args = dict(n_params=100, n_trainable=100, param_bytes=4, mode="full", **TINY)
    with pytest.raises(ValueError, match=message):
        estimate_training_memory(**{**args, **override})


def test_available_memory_cpu(monkeypatch):
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: SimpleNamespace(available=123))
    assert memory.available_memory("cpu") == 123


def test_available_memory_takes_the_least_free_gpu(monkeypatch):
    free = {0: 50, 1: 20, 2: 40}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 100))
    assert memory.available_memory("cuda") == 20
    assert memory.available_memory("cuda:0,2") == 40
    assert memory.available_memory("cuda:2") == 40
    with pytest.raises(ValueError, match="no GPU 5"):
        memory.available_memory("cuda:5")
    with pytest.raises(ValueError, match="must be integers"):
        memory.available_memory("cuda:x")
    with pytest.raises(ValueError, match="device must be"):
        memory.available_memory("tpu")


def test_available_memory_without_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        memory.available_memory("cuda")
