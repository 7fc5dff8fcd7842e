import pytest
import torch

from mpctf.aggregation import PartySpec
from mpctf.aggregation.flexlora import FlexLoRA, FlexLoRAParams
from mpctf.messages import Update

A, B = "m.lora_A.weight", "m.lora_B.weight"
SPECS = {"a": PartySpec(lora_rank=2, lora_alpha=4.0), "b": PartySpec(lora_rank=3, lora_alpha=3.0)}
WEIGHTS = {"a": 1, "b": 3}


def _trained(party: str, sent: dict, g: torch.Generator) -> tuple[Update, torch.Tensor]:
    """A party's update towards random factors, and its ΔW = s · B A."""
    rank, scale = SPECS[party].lora_rank, SPECS[party].lora_alpha / SPECS[party].lora_rank
    a, b = torch.randn(rank, 6, generator=g), torch.randn(5, rank, generator=g)
    update = Update(party, 1, {A: a - sent[A], B: b - sent[B]}, num_samples=WEIGHTS[party], num_tokens=1)
    return update, scale * b @ a


def _round(server_rank: int | None) -> tuple[FlexLoRA, dict, torch.Tensor]:
    s = FlexLoRA(FlexLoRAParams(server_rank=server_rank))
    s.configure_parties(SPECS)
    rank = server_rank or 3
    g = torch.Generator().manual_seed(0)
    global_state = {A: torch.randn(rank, 6, generator=g), B: torch.zeros(5, rank)}
    s.begin_round(1, global_state)
    expected = torch.zeros(5, 6)
    for party in SPECS:
        update, dw = _trained(party, s.state_for_party(party, global_state), g)
        s.accumulate(update)
        expected += WEIGHTS[party] * dw / 4
    return s, s.finalize(), expected


def test_exact_when_the_server_rank_suffices() -> None:
    _, out, expected = _round(server_rank=5)  # Σ r_k = 5
    assert torch.allclose(out[B] @ out[A], expected, atol=1e-5)
    assert torch.allclose(out[A] @ out[A].T, torch.eye(5), atol=1e-5)


def test_truncation_is_the_best_low_rank_approximation_and_parties_get_theirs() -> None:
    s, out, expected = _round(server_rank=None)  # R = max r_k = 3
    u, sv, vh = torch.linalg.svd(expected.double())
    best = {r: (u[:, :r] * sv[:r]) @ vh[:r] for r in (2, 3)}
    assert torch.allclose((out[B] @ out[A]).double(), best[3], atol=1e-5)
    for party in SPECS:  # with its own scaling, party k holds the best rank-r_k approximation
        sent = s.state_for_party(party, out)
        rank, scale = SPECS[party].lora_rank, SPECS[party].lora_alpha / SPECS[party].lora_rank
        assert sent[A].shape == (rank, 6)
        assert torch.allclose((scale * sent[B] @ sent[A]).double(), best[rank], atol=1e-5)


def test_hand_computed_diagonal(upd) -> None:
    s = FlexLoRA()
    s.configure_parties({"a": PartySpec(1, 1.0), "b": PartySpec(1, 1.0)})
    s.begin_round(1, {A: torch.tensor([[1.0, 0.0]]), B: torch.zeros(2, 1)})
    # a trains to A=[1,0], B=[1,0]ᵀ (ΔW=diag(1,0)); b to A=[0,1], B=[0,2]ᵀ (ΔW=diag(0,2)); mean diag(0.5, 1)
    s.accumulate(upd("a", **{A: [[0.0, 0.0]], B: [[1.0], [0.0]]}))
    s.accumulate(upd("b", **{A: [[-1.0, 1.0]], B: [[0.0], [2.0]]}))
    out = s.finalize()
    assert torch.allclose(out[B] @ out[A], torch.tensor([[0.0, 0.0], [0.0, 1.0]]), atol=1e-6)


def test_server_rank_below_a_party_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="`server_rank` 2 is below the largest party rank 3"):
        FlexLoRA(FlexLoRAParams(server_rank=2)).configure_parties(SPECS)
