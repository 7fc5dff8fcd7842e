import pytest
import torch

from mpctf.aggregation import PartySpec
from mpctf.aggregation.flora import Flora
from mpctf.messages import Update

A, B = "m.lora_A.weight", "m.lora_B.weight"
SPECS = {"a": PartySpec(lora_rank=1, lora_alpha=2.0), "b": PartySpec(lora_rank=1, lora_alpha=1.0)}


def _to(sent: dict, party: str, a: list, b: list, samples: int = 1, h: float = 0.0) -> Update:
    """The update of a party that trained its fresh adapter to ``(a, b)``."""
    tensors = {A: torch.tensor(a) - sent[A], B: torch.tensor(b) - sent[B], "h": torch.tensor([h])}
    return Update(party, 1, tensors, num_samples=samples, num_tokens=1)


def _strategy(specs=SPECS) -> tuple[Flora, dict]:
    s = Flora()
    s.configure_parties(specs)
    global_state = {A: torch.zeros(2, 2), B: torch.zeros(2, 2), "h": torch.zeros(1)}
    s.begin_round(1, global_state)
    return s, global_state


def test_parties_get_fresh_seeded_adapters_of_their_rank() -> None:
    s, g = _strategy()
    sent = s.state_for_party("a", g)
    assert sent[A].shape == (1, 2) and sent[B].shape == (2, 1) and not sent[B].any() and sent[A].any()
    assert torch.equal(sent[A], s.state_for_party("a", g)[A])
    assert not torch.equal(sent[A], s.state_for_party("b", g)[A])


def test_stacking_by_hand() -> None:
    s, g = _strategy()
    # ΔW_a = 2·[1, 1]ᵀ[1, 0] = [[2, 0], [2, 0]];  ΔW_b = 1·[2, 0]ᵀ[0, 1] = [[0, 2], [0, 0]]
    s.accumulate(_to(s.state_for_party("a", g), "a", [[1.0, 0.0]], [[1.0], [1.0]], h=2.0))
    s.accumulate(_to(s.state_for_party("b", g), "b", [[0.0, 1.0]], [[2.0], [0.0]]))
    out = s.finalize()
    assert torch.allclose(out[A], torch.eye(2))  # A_a stacked over A_b
    assert torch.allclose(out[B], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))  # [1·2·B_a | 1·1·B_b] / 2
    assert torch.allclose(out[B] @ out[A], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(out["h"], torch.tensor([1.0]))


def test_heterogeneous_ranks_aggregate_exactly() -> None:
    specs = {"a": PartySpec(2, 16.0), "b": PartySpec(4, 8.0), "c": PartySpec(1, 1.0)}
    s = Flora()
    s.configure_parties(specs)
    g = torch.Generator().manual_seed(3)
    global_state = {A: torch.zeros(3, 7), B: torch.zeros(6, 3)}
    s.begin_round(1, global_state)
    expected, total = torch.zeros(6, 7), 0
    for i, (party, spec) in enumerate(specs.items()):
        sent = s.state_for_party(party, global_state)
        a, b = torch.randn(spec.lora_rank, 7, generator=g), torch.randn(6, spec.lora_rank, generator=g)
        s.accumulate(Update(party, 1, {A: a - sent[A], B: b - sent[B]}, num_samples=i + 1, num_tokens=1))
        expected += (i + 1) * (spec.lora_alpha / spec.lora_rank) * b @ a
        total += i + 1
    out = s.finalize()
    assert out[A].shape == (7, 7) and out[B].shape == (6, 7)
    assert torch.allclose(out[B] @ out[A], expected / total, atol=1e-5)


def test_next_round_merges_the_stack_and_refuses_a_skipped_merge() -> None:
    s, g = _strategy()
    for party in SPECS:
        sent = s.state_for_party(party, g)
        s.accumulate(_to(sent, party, sent[A].tolist(), [[1.0], [1.0]]))
    stack = s.finalize()
    s.begin_round(2, stack)
    payload, instructions = s.round_payload(), s.party_instructions()
    assert torch.equal(payload[A], stack[A]) and torch.equal(payload[B], stack[B]) and "h" not in payload
    assert instructions == {"round": 2, "first_round": 1}
    kept = {"flora_merged_round": 1}
    assert Flora.party_hooks(instructions, payload, "a", {}, kept).merge_into_base() is payload
    assert kept["flora_merged_round"] == 2
    with pytest.raises(ValueError, match="merged none"):
        Flora.party_hooks(instructions, payload, "a", {}, {}).merge_into_base()
    s.begin_round(3, stack)
    with pytest.raises(ValueError, match="last merged round 1's stack, round 3 needs round 2's"):
        Flora.party_hooks(
            s.party_instructions(), payload, "a", {}, {"flora_merged_round": 1}
        ).merge_into_base()
