from __future__ import annotations

import pytest
import torch

from mpctf.messages import pack
from mpctf.privacy.secagg import wire


def test_roundtrip_nested_bytes_and_tensors():
    message = {
        "party": "a",
        "round": 2,
        "shares": {"b": b"\x00\xffxyz", "c": b""},
        "masked": torch.tensor([1, -2, 3], dtype=torch.int32),
        "survivors": ["a", "b"],
        "layout": {"names": ["w"], "shapes": [[3]], "dtypes": ["float32"]},
    }
    back = wire.loads(wire.dumps(message))
    assert back["shares"] == message["shares"]
    assert torch.equal(back["masked"], message["masked"])
    assert {k: v for k, v in back.items() if k not in ("shares", "masked")} == {
        k: v for k, v in message.items() if k not in ("shares", "masked")
    }


def test_foreign_payload_is_refused():
    with pytest.raises(ValueError, match="not a secure-aggregation message"):
        wire.loads(pack({}, {"kind": "update"}))
