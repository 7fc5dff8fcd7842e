import json

import pytest
import torch
from pydantic import ValidationError

from mpctf.comm import CODECS, CodecChain, build_codec
from mpctf.messages import Update, pack

TOPK_INT8_ZSTD = [("topk", {"fraction": 0.1}), ("int8", {"block_size": 16}), ("zstd", {"level": 3})]


def _lora_like(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "layers.0.q_proj.lora_A.weight": 1e-3 * torch.randn(8, 40, generator=generator),
        "layers.0.q_proj.lora_B.weight": 1e-3 * torch.randn(40, 8, generator=generator),
        "layers.0.v_proj.lora_B.weight": (1e-3 * torch.randn(13, 8, generator=generator)).to(torch.bfloat16),
    }


def test_unknown_codec_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown codec 'gzip'; known: " + ", ".join(CODECS.names())):
        CodecChain([("int8", None), ("gzip", {})])


def test_bad_params_are_a_pydantic_error() -> None:
    with pytest.raises(ValidationError, match="`fraction` must be in"):
        CodecChain([("topk", {"fraction": 2.0})])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        build_codec("int8", {"bits": 8})


def test_topk_int8_zstd_composes_and_stays_within_the_int8_bound_of_what_topk_sent() -> None:
    tensors = _lora_like(0)
    reference = CodecChain(TOPK_INT8_ZSTD[:1])
    chain = CodecChain(TOPK_INT8_ZSTD)
    sent_by_topk = reference.decode(*reference.encode(tensors, {}))
    encoded, header = chain.encode(tensors, {})
    assert list(encoded) == ["zstd"]
    assert [entry["name"] for entry in header["codecs"]] == ["topk", "int8", "zstd"]
    decoded = chain.decode(encoded, header)
    for name, tensor in tensors.items():
        assert decoded[name].shape == tensor.shape and decoded[name].dtype == tensor.dtype
        expected, got = sent_by_topk[name].double(), decoded[name].double()
        assert bool((got[expected == 0] == 0).all())  # int8 never invents an entry top-k did not send
        # Every block scale of the values is at most max|values| / 127; bf16 output adds its own rounding.
        bound = float(expected.abs().max()) / 127 / 2 * (1 + 1e-4) + got.abs() * 2.0**-8
        assert bool(((got - expected).abs() <= bound).all())


def test_chain_state_has_one_sub_dict_per_stage_index() -> None:
    chain = CodecChain(TOPK_INT8_ZSTD)
    state: dict = {}
    chain.encode(_lora_like(0), state)
    assert sorted(state) == [0, 1, 2]
    assert sorted(state[0]) == sorted(_lora_like(0))  # top-k's residuals
    assert state[1] == {} and state[2] == {}


def test_error_feedback_works_through_the_chain() -> None:
    """After several rounds the residual is all that separates the cumulative sent and true updates."""
    chain = CodecChain(TOPK_INT8_ZSTD[:1] + TOPK_INT8_ZSTD[2:])  # lossless after top-k: the identity is exact
    state: dict = {}
    total_true = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in _lora_like(0).items()}
    total_sent = {k: torch.zeros_like(v) for k, v in total_true.items()}
    for seed in range(5):
        tensors = {k: v.float() for k, v in _lora_like(seed).items()}
        decoded = chain.decode(*chain.encode(tensors, state))
        for name in tensors:
            total_true[name] += tensors[name]
            total_sent[name] += decoded[name]
    for name in total_true:
        assert torch.allclose(total_sent[name] + state[0][name], total_true[name], atol=1e-9, rtol=1e-6)


def test_header_is_json_and_survives_the_wire_inside_an_update() -> None:
    chain = CodecChain(TOPK_INT8_ZSTD)
    tensors = _lora_like(1)
    encoded, header = chain.encode(tensors, {})
    assert json.loads(json.dumps(header)) == header
    update = Update(party="p0", round=3, tensors=encoded, num_samples=10, num_tokens=100, header=header)
    received = Update.from_bytes(update.to_bytes())
    decoded = chain.decode(received.tensors, received.header)
    direct = chain.decode(encoded, header)
    assert all(torch.equal(decoded[name], direct[name]) for name in tensors)


def test_decoding_with_another_chain_is_refused() -> None:
    encoded, header = CodecChain([("fp16", None), ("zstd", None)]).encode({"x": torch.ones(3)}, {})
    with pytest.raises(
        ValueError, match=r"encoded by codecs \['fp16', 'zstd'\], this chain decodes \['bf16', 'zstd'\]"
    ):
        CodecChain([("bf16", None), ("zstd", None)]).decode(encoded, header)


def test_decode_runs_the_stages_in_reverse() -> None:
    # zstd hides the fp16 tensors inside its blob, so decoding fp16 first would find nothing to cast back.
    chain = CodecChain([("fp16", None), ("zstd", None)])
    decoded = chain.decode(*chain.encode({"x": torch.tensor([0.5, 2.0])}, {}))
    assert decoded["x"].dtype == torch.float32 and decoded["x"].tolist() == [0.5, 2.0]


def test_empty_chain_is_the_lossless_identity() -> None:
    chain = CodecChain([])
    tensors = {"x": torch.randn(3)}
    encoded, header = chain.encode(tensors, {})
    assert header == {"codecs": []}
    assert chain.lossless and chain.decode(encoded, header)["x"] is tensors["x"]


def test_lossless_only_when_every_stage_is() -> None:
    assert CodecChain([("zstd", None)]).lossless
    assert not CodecChain([("int8", None), ("zstd", None)]).lossless


def test_bytes_shrink_along_the_chain() -> None:
    tensors = {"w": 1e-3 * torch.randn(64, 256, generator=torch.Generator().manual_seed(0))}
    sizes = [len(pack(*CodecChain(TOPK_INT8_ZSTD[:n]).encode(tensors, {}))) for n in range(4)]
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3]
