import pytest
import torch

from mpctf.aggregation import PartySpec
from mpctf.aggregation.hetlora import HetLoRA
from mpctf.errors import UpdateRejected

A, B = "m.lora_A.weight", "m.lora_B.weight"
GLOBAL = {A: torch.eye(2), B: torch.tensor([[2.0, 0.0], [0.0, 4.0]]), "h": torch.zeros(1)}


def _strategy() -> HetLoRA:
    s = HetLoRA()
    s.configure_parties(
        {"a": PartySpec(lora_rank=1, lora_alpha=2.0), "b": PartySpec(lora_rank=2, lora_alpha=2.0)}
    )
    s.begin_round(1, GLOBAL)
    return s


def test_each_party_receives_its_leading_slots_in_its_own_scale() -> None:
    s = _strategy()
    sent = s.state_for_party("a", GLOBAL)  # r = 1, s = 2
    assert torch.equal(sent[A], torch.tensor([[1.0, 0.0]]))
    assert torch.equal(sent[B], torch.tensor([[1.0], [0.0]]))
    assert torch.equal(s.state_for_party("b", GLOBAL)[B], GLOBAL[B])  # r = 2, s = 1


def test_zero_padded_average_by_hand(upd) -> None:
    s = _strategy()
    # a: local A = [[1, 1]], B = [[2], [1]] → folded 2·B = [[4], [2]]
    #    → padded A = [[1, 1], [0, 0]], B = [[4, 0], [2, 0]]
    s.accumulate(upd("a", samples=1, h=[4.0], **{A: [[0.0, 1.0]], B: [[1.0], [1.0]]}))
    # b: local A = I, B = [[2, 0], [0, 0]]
    s.accumulate(upd("b", samples=3, h=[0.0], **{A: [[0.0, 0.0], [0.0, 0.0]], B: [[0.0, 0.0], [0.0, -4.0]]}))
    out = s.finalize()
    assert torch.allclose(out[A], torch.tensor([[1.0, 0.25], [0.0, 0.75]]))  # (pad A_a + 3 I) / 4
    assert torch.allclose(
        out[B], torch.tensor([[2.5, 0.0], [0.5, 0.0]])
    )  # ([[4,0],[2,0]] + 3 [[2,0],[0,0]]) / 4
    assert torch.allclose(out["h"], torch.tensor([1.0]))


def test_update_is_checked_against_the_partys_own_rank(upd) -> None:
    s = _strategy()
    with pytest.raises(UpdateRejected, match=r"'m.lora_A.weight' has shape \(2, 2\), expected \(1, 2\)"):
        s.accumulate(upd("a", h=[0.0], **{A: [[0.0, 0.0], [0.0, 0.0]], B: [[0.0], [0.0]]}))


def test_global_adapter_must_have_the_largest_rank() -> None:
    s = HetLoRA()
    s.configure_parties(
        {"a": PartySpec(lora_rank=1, lora_alpha=1.0), "b": PartySpec(lora_rank=3, lora_alpha=1.0)}
    )
    with pytest.raises(ValueError, match=r"rank 3 .*r=3 and lora_alpha=3.*ranks \[2\]"):
        s.begin_round(1, GLOBAL)
    with pytest.raises(ValueError, match="configure_parties"):
        HetLoRA().begin_round(1, GLOBAL)
