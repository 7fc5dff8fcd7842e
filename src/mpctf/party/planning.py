"""Per-party data plans: the volume a party reports, and the chunk plan the server derives from all reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mpctf.config import RunConfig, TrainingConfig
from mpctf.data.chunking import MemoryBudget, PartyDataStats, PartyPlan, divisors_at_most, plan_parties
from mpctf.data.federated import FederatedData
from mpctf.data.tasks import Example, make_task
from mpctf.errors import DataError
from mpctf.model.bundle import ModelBundle
from mpctf.party.memory import available_memory, estimate_training_memory


def party_stats(examples: Sequence[Example]) -> PartyDataStats:
    """What a party reports about its data: sample count and token lengths (never the data itself)."""
    lengths = [len(e.input_ids) for e in examples]
    return PartyDataStats(num_samples=len(lengths), token_lengths=lengths)


def memory_report(
    bundle: ModelBundle, training: TrainingConfig, examples: Sequence[Example], cap_gb: float | None = None
) -> dict[str, Any]:
    """What a party reports about its memory: free bytes now, and the estimated peak of a training step for
    each micro-batch size that divides the batch (at the party's longest sequence). Empty for models the
    estimator does not describe (it knows Llama-style decoders)."""
    cfg = getattr(bundle.model, "config", None)
    needed = ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads")
    if cfg is None or not all(hasattr(cfg, k) for k in needed) or not examples:
        return {}
    params = list(bundle.model.parameters())
    n_params = sum(p.numel() for p in params)
    n_trainable = sum(p.numel() for p in params if p.requires_grad)
    device = "cuda" if bundle.device.type == "cuda" else "cpu"
    peaks = {}
    for micro in divisors_at_most(training.batch_size, training.batch_size):
        estimate = estimate_training_memory(
            n_params=n_params,
            n_trainable=n_trainable,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            vocab_size=cfg.vocab_size,
            intermediate_size=cfg.intermediate_size,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None),
            seq_len=max(len(e.input_ids) for e in examples),
            micro_batch=micro,
            param_bytes=torch.finfo(params[0].dtype).bits // 8,
            mode="full" if training.mode == "full" else "lora",
            lora_targets=tuple(training.lora.target_modules),
            attn_implementation=_attention_kind(cfg),
        )
        peaks[str(micro)] = estimate.total
    free = available_memory(device)
    if cap_gb is not None:
        free = min(free, int(cap_gb * 2**30))
    return {"available_bytes": free, "peak_bytes": peaks}


def _attention_kind(cfg: Any) -> str:
    kind = getattr(cfg, "_attn_implementation", None) or "eager"
    return kind if kind in ("eager", "sdpa", "flash_attention_2") else "sdpa"


def _budget(report: dict[str, Any]) -> MemoryBudget | None:
    if not report:
        return None
    table = {int(k): int(v) for k, v in report["peak_bytes"].items()}
    return MemoryBudget(available_bytes=int(report["available_bytes"]), peak_bytes=lambda m: table[m])


def make_plans(
    config: RunConfig, stats: dict[str, PartyDataStats], memory: dict[str, dict[str, Any]] | None = None
) -> dict[str, PartyPlan]:
    """Apply ``data.partition`` to every party's reported volume (and memory, when reported)."""
    part = config.data.partition
    budgets = {p: b for p, b in ((p, _budget(r)) for p, r in (memory or {}).items()) if b is not None}
    try:
        return plan_parties(
            part.name, part.params, stats, batch_size=config.training.batch_size, memory=budgets
        )
    except ValueError as exc:
        raise DataError(f"data.partition: {exc}") from None


def local_plans(config: RunConfig) -> dict[str, PartyPlan]:
    """Plans computed on this machine, for parties whose data is readable here (simulations, ``mpctf plan``).

    Loads the model once to describe its memory needs; each party's memory is this machine's.
    """
    data = FederatedData(config)
    stats: dict[str, PartyDataStats] = {}
    memory: dict[str, dict[str, Any]] = {}
    bundles: dict[str, ModelBundle] = {}
    for party in config.party_names:
        training = config.party_training(party)
        key = training.model_dump_json()
        if key not in bundles:
            bundles[key] = ModelBundle.load(config, training)
        bundle = bundles[key]
        task = make_task(config, bundle.tokenizer)
        examples = task.encode_all(data.party_rows(party), f"party {party!r} data")
        stats[party] = party_stats(examples)
        memory[party] = memory_report(bundle, training, examples, config.party(party).memory_gb)
    return make_plans(config, stats, memory)
