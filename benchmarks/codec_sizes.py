"""Bytes on the wire, reconstruction error and speed of each codec chain on a LoRA-sized update.

The update has the LoRA shapes of SmolLM2-135M at rank 8 on q_proj and v_proj (30 layers; A is 8×576, B is
576×8 for q_proj and 192×8 for v_proj) filled with N(0, 1e-3²) deltas. Bytes are
``len(pack(encoded, header))``, what a runtime would send; the ratio is against the values as plain float32.
Timings are single-threaded by default: these tensors are too small for intra-op threads to pay off, and a
single thread keeps the figures steady on a busy machine.

Run from the repository root::

    PYTHONPATH=src python benchmarks/codec_sizes.py [--repeats 7] [--rounds 20] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mpctf.comm import CodecChain, StageSpec, fp32_bytes
from mpctf.messages import NamedTensors, pack

CHAINS: dict[str, list[StageSpec]] = {
    "none": [],
    "fp16": [("fp16", None)],
    "bf16": [("bf16", None)],
    "int8": [("int8", None)],
    "4bit": [("int4", None)],
    "zstd": [("zstd", None)],
    "int8+zstd": [("int8", None), ("zstd", None)],
    "4bit b256+zstd": [("int4", {"block_size": 256}), ("zstd", None)],
    "topk 1%": [("topk", {"fraction": 0.01})],
    "topk 1%+int8+zstd": [("topk", {"fraction": 0.01}), ("int8", None), ("zstd", None)],
}


def lora_update(
    generator: torch.Generator, *, layers: int = 30, rank: int = 8, scale: float = 1e-3
) -> NamedTensors:
    """One party's update with SmolLM2-135M's LoRA shapes on q_proj (576→576) and v_proj (576→192)."""
    shapes = {"q_proj": (576, 576), "v_proj": (576, 192)}
    update: NamedTensors = {}
    for layer in range(layers):
        for proj, (fan_in, fan_out) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            update[f"{prefix}.lora_A.weight"] = scale * torch.randn(rank, fan_in, generator=generator)
            update[f"{prefix}.lora_B.weight"] = scale * torch.randn(fan_out, rank, generator=generator)
    return update


def relative_error(truth: NamedTensors, approx: NamedTensors) -> float:
    """‖x − x̂‖₂ / ‖x‖₂ over all tensors together."""
    num = sum(float((approx[k].double() - v.double()).pow(2).sum()) for k, v in truth.items())
    den = sum(float(v.double().pow(2).sum()) for v in truth.values())
    return (num / den) ** 0.5


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cumulative_error(chain: CodecChain, updates: list[NamedTensors]) -> float:
    """Relative error of the sum of decoded updates against the sum of the true ones over several rounds."""
    state: dict[int, dict[str, Any]] = {}
    total_true = {k: torch.zeros_like(v) for k, v in updates[0].items()}
    total_sent = {k: torch.zeros_like(v) for k, v in updates[0].items()}
    for update in updates:
        decoded = chain.decode(*chain.encode(update, state))
        for k in update:
            total_true[k] += update[k]
            total_sent[k] += decoded[k].float()
    return relative_error(total_true, total_sent)


def measure(name: str, specs: list[StageSpec], updates: list[NamedTensors], repeats: int) -> dict[str, Any]:
    chain = CodecChain(specs)
    update = updates[0]
    encoded, header = chain.encode(update, {})
    decoded = chain.decode(encoded, header)
    sent = len(pack(encoded, header))
    state: dict[int, dict[str, Any]] = {}  # timing reuses one state, as a party does from round to round
    return {
        "chain": name,
        "bytes": sent,
        "ratio": fp32_bytes(update) / sent,
        "rel_err": relative_error(update, decoded),
        "cum_err": cumulative_error(chain, updates),
        "encode_ms": median_ms(lambda: chain.encode(update, state), repeats),
        "decode_ms": median_ms(lambda: chain.decode(encoded, header), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timing repetitions (the median is reported)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds for the cumulative error column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    updates = [lora_update(generator) for _ in range(args.rounds)]
    first = updates[0]
    print(
        f"update: {len(first)} tensors, {sum(t.numel() for t in first.values()):,} values, "
        f"{fp32_bytes(first):,} bytes as float32; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.machine()}"
    )
    print()
    print(
        "| chain | bytes sent | ratio vs fp32 | rel. error, 1 round "
        f"| rel. error of the sum, {args.rounds} rounds | encode ms | decode ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, specs in CHAINS.items():
        row = measure(name, specs, updates, args.repeats)
        print(
            f"| {row['chain']} | {row['bytes']:,} | {row['ratio']:.2f}× | {row['rel_err']:.2e} "
            f"| {row['cum_err']:.2e} | {row['encode_ms']:.1f} | {row['decode_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
