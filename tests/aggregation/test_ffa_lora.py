import pytest
import torch

from mpctf.aggregation import PartySpec
from mpctf.aggregation.ffa_lora import FFALoRA


def test_only_b_is_averaged_and_a_stays(upd) -> None:
    s = FFALoRA()
    s.configure_parties({"a": PartySpec(1, 2.0), "b": PartySpec(1, 2.0)})
    a0 = torch.tensor([[1.0, 0.0]])
    s.begin_round(1, {"m.lora_A.weight": a0, "m.lora_B.weight": torch.tensor([[0.0]]), "h": torch.zeros(1)})
    # party a's ΔA (noise from a privacy stage, say) must not move the frozen A
    s.accumulate(
        upd("a", samples=1, h=[1.0], **{"m.lora_A.weight": [[0.3, 0.3]], "m.lora_B.weight": [[1.0]]})
    )
    s.accumulate(
        upd("b", samples=3, h=[0.0], **{"m.lora_A.weight": [[0.0, 0.0]], "m.lora_B.weight": [[3.0]]})
    )
    out = s.finalize()
    assert torch.equal(out["m.lora_A.weight"], a0)
    assert torch.allclose(out["m.lora_B.weight"], torch.tensor([[2.5]]))
    assert torch.allclose(out["h"], torch.tensor([0.25]))


def test_parties_freeze_lora_a() -> None:
    hooks = FFALoRA.party_hooks({}, {}, "a", {}, {})
    assert not hooks.trainable("base.q.lora_A.weight")
    assert hooks.trainable("base.q.lora_B.weight") and hooks.trainable("head.weight")


def test_refuses_heterogeneous_alpha() -> None:
    with pytest.raises(ValueError, match="ffa_lora needs one LoRA rank and alpha"):
        FFALoRA().configure_parties({"a": PartySpec(2, 2.0), "b": PartySpec(2, 4.0)})
