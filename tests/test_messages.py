import pytest
import torch

from mpctf.messages import RoundTask, Update, pack, unpack


def test_pack_roundtrip_keeps_dtypes_and_header() -> None:
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1, -2], dtype=torch.int8),
    }
    back, header = unpack(pack(tensors, {"x": 1}))
    assert header == {"x": 1}
    assert back["b"].dtype == torch.int8 and torch.equal(back["a"], tensors["a"])


def test_update_roundtrip_with_extra() -> None:
    upd = Update(
        "p",
        3,
        {"w": torch.ones(2)},
        num_samples=5,
        num_tokens=50,
        metrics={"loss": 0.5},
        extra={"c": torch.zeros(1)},
    )
    back = Update.from_bytes(upd.to_bytes())
    assert (back.party, back.round, back.num_samples, back.num_tokens) == ("p", 3, 5, 50)
    assert back.metrics == {"loss": 0.5} and set(back.extra) == {"c"} and set(back.tensors) == {"w"}


def test_task_roundtrip() -> None:
    task = RoundTask(2, {"w": torch.ones(3)}, {"op": "train", "plan": {"k": 1}})
    back = RoundTask.from_bytes(task.to_bytes())
    assert back.round == 2 and back.instructions == {"op": "train", "plan": {"k": 1}}


def test_corrupt_payload_is_value_error() -> None:
    with pytest.raises(ValueError, match="corrupt message"):
        unpack(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="not a party update"):
        Update.from_bytes(RoundTask(1, {}).to_bytes())


@pytest.mark.parametrize(
    "header",
    [
        {"kind": "update", "party": "p", "round": 1},  # no sample counts
        {"kind": "update", "party": "p", "round": "one", "num_samples": 1, "num_tokens": 1},
        {"kind": "update", "party": "p", "round": 1, "num_samples": 1, "num_tokens": 1, "metrics": [1]},
        {"kind": "update", "party": "p", "round": 1, "num_samples": 1, "num_tokens": 1, "stages": "x"},
    ],
)
def test_malformed_update_header_is_value_error(header: dict) -> None:
    # A reply comes from another machine: whatever its header holds, the server sees a ValueError, never a crash.
    with pytest.raises(ValueError, match="malformed update header"):
        Update.from_bytes(pack({"w": torch.ones(1)}, header))


def test_header_that_is_not_a_mapping_is_value_error() -> None:
    payload = pack({"w": torch.ones(1)}, {}).replace(b'"{}"', b'"[]"')  # same length, a list
    with pytest.raises(ValueError, match="not a mapping"):
        unpack(payload)
