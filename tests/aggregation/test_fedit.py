import pytest
import torch

from mpctf.aggregation import PartySpec
from mpctf.aggregation.fedit import FedIT


def test_plain_average_of_both_factors(upd) -> None:
    s = FedIT()
    s.configure_parties({"a": PartySpec(1, 2.0), "b": PartySpec(1, 2.0)})
    s.begin_round(
        1, {"m.lora_A.weight": torch.tensor([[1.0, 0.0]]), "m.lora_B.weight": torch.tensor([[0.0]])}
    )
    s.accumulate(upd("a", samples=1, **{"m.lora_A.weight": [[0.0, 1.0]], "m.lora_B.weight": [[1.0]]}))
    s.accumulate(upd("b", samples=3, **{"m.lora_A.weight": [[1.0, 1.0]], "m.lora_B.weight": [[3.0]]}))
    out = s.finalize()
    # A = [1, 0] + (1·[0, 1] + 3·[1, 1]) / 4 = [1.75, 1]; B = 0 + (1 + 9) / 4 = 2.5
    assert torch.allclose(out["m.lora_A.weight"], torch.tensor([[1.75, 1.0]]))
    assert torch.allclose(out["m.lora_B.weight"], torch.tensor([[2.5]]))


def test_refuses_heterogeneous_ranks_and_non_lora_state() -> None:
    with pytest.raises(ValueError, match="fedit needs one LoRA rank and alpha"):
        FedIT().configure_parties({"a": PartySpec(1, 2.0), "b": PartySpec(2, 2.0)})
    with pytest.raises(ValueError, match="no lora_A/lora_B pair"):
        FedIT().begin_round(1, {"w": torch.zeros(1)})
