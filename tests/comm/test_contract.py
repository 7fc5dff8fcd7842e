"""Checks every registered codec passes: adding a codec adds a row to each of these tests."""

import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mpctf.comm import CODECS, build_codec
from mpctf.messages import pack, unpack

BOUNDED = settings(max_examples=25, deadline=None)
ALL = CODECS.names()


def test_every_builtin_codec_is_registered() -> None:
    assert ALL == ["bf16", "fp16", "int4", "int8", "topk", "zstd"]


@pytest.mark.parametrize("name", ALL)
def test_docstring_gives_a_reference_and_the_rule(name: str) -> None:
    doc = CODECS.get(name).__doc__ or ""
    assert re.search(r"References?: .*\(\d{4}\)", doc), f"{name}: no 'Reference: Author (year)' line"
    assert "Rule" in doc, f"{name}: no 'Rule' paragraph"


@pytest.mark.parametrize("name", ALL)
def test_params_forbid_unknown_keys(name: str) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        build_codec(name, {"no_such_param": 1})


@pytest.mark.parametrize("name", ALL)
@BOUNDED
@given(data=st.data())
def test_round_trip_keeps_names_shapes_and_dtypes_through_the_wire(
    name: str, data: st.DataObject, named_float_tensors: st.SearchStrategy[dict[str, torch.Tensor]]
) -> None:
    tensors = {**data.draw(named_float_tensors), "steps": torch.arange(5)}
    codec = build_codec(name)
    encoded, header = codec.encode(tensors, {})
    assert json.loads(json.dumps(header)) == header
    received, received_header = unpack(pack(encoded, {"codec": header}))
    decoded = codec.decode(received, received_header["codec"])
    assert sorted(decoded) == sorted(tensors)
    for key, tensor in tensors.items():
        assert decoded[key].shape == tensor.shape and decoded[key].dtype == tensor.dtype, key
    assert torch.equal(decoded["steps"], tensors["steps"])  # integer tensors pass through every codec
    if codec.lossless:
        assert all(torch.equal(decoded[key], tensor) for key, tensor in tensors.items())


@pytest.mark.parametrize("name", ALL)
def test_lossy_codecs_say_so(name: str) -> None:
    codec = build_codec(name)
    tensors = {"x": torch.linspace(-1, 1, 1000) + 1e-4 * torch.arange(1000).sin()}
    exact = torch.equal(codec.decode(*codec.encode(tensors, {}))["x"], tensors["x"])
    assert exact == codec.lossless


@pytest.mark.parametrize("name", ALL)
def test_empty_update_round_trips(name: str) -> None:
    codec = build_codec(name)
    assert codec.decode(*codec.encode({}, {})) == {}
