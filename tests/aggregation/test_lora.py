import pytest
import torch

from mpctf.aggregation import PartySpec
from mpctf.aggregation.lora import (
    FactorStack,
    LoraParties,
    best_rank_factors,
    fresh_factors,
    lora_modules,
    require_homogeneous,
    state_for_rank,
    zero_pad,
)


def test_modules_pair_their_factors() -> None:
    state = {
        "m.lora_A.weight": torch.zeros(2, 3),
        "m.lora_B.weight": torch.zeros(4, 2),
        "bias": torch.zeros(1),
    }
    assert lora_modules(state) == ["m"]
    with pytest.raises(ValueError, match="only one of lora_A / lora_B"):
        lora_modules({"m.lora_A.weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="do not pair"):
        lora_modules({"m.lora_A.weight": torch.zeros(2, 3), "m.lora_B.weight": torch.zeros(4, 3)})


def test_party_table_and_its_errors() -> None:
    table = LoraParties.from_specs({"a": PartySpec(2, 8.0), "b": PartySpec(4, 4.0)}, "hetlora")
    assert table.of("a") == (2, 4.0) and table.of("b") == (4, 1.0) and table.max_rank == 4
    with pytest.raises(ValueError, match="party 'z' is not among"):
        table.of("z")
    with pytest.raises(ValueError, match="party 'c' lacks one"):
        LoraParties.from_specs({"c": PartySpec(lora_rank=2)}, "hetlora")
    with pytest.raises(ValueError, match=r"party 'a' has .*party 'b' has"):
        require_homogeneous({"a": PartySpec(2, 8.0), "b": PartySpec(4, 8.0)}, "fedit")


def test_state_for_rank_truncates_and_unfolds_the_scale() -> None:
    state = {
        "m.lora_A.weight": torch.arange(6.0).reshape(3, 2),
        "m.lora_B.weight": torch.arange(6.0).reshape(2, 3),
    }
    out = state_for_rank(state, 2, 2.0)
    assert torch.equal(out["m.lora_A.weight"], torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(out["m.lora_B.weight"], torch.tensor([[0.0, 0.5], [1.5, 2.0]]))
    # the party's own scaling gives back the server's product on those slots
    assert torch.allclose(
        2.0 * out["m.lora_B.weight"] @ out["m.lora_A.weight"],
        state["m.lora_B.weight"][:, :2] @ state["m.lora_A.weight"][:2],
    )


def test_zero_pad_keeps_the_product() -> None:
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [4.0]])
    pa, pb = zero_pad((a, b), 3)
    assert pa.shape == (3, 2) and pb.shape == (2, 3) and torch.equal(pb @ pa, b @ a)


def test_stack_is_the_exact_weighted_sum_of_products() -> None:
    g = torch.Generator().manual_seed(0)
    parts = [
        (torch.randn(r, 5, generator=g), torch.randn(4, r, generator=g), w) for r, w in ((1, 1.0), (3, 3.0))
    ]
    stack = FactorStack()
    for a, b, w in parts:
        stack.add({"m": (a, b)}, w)
    a, b = stack.stacked()["m"]
    assert a.shape == (4, 5) and b.shape == (4, 4)
    assert torch.allclose(b @ a, sum(w * bb @ aa for aa, bb, w in parts) / 4.0, atol=1e-6)


def test_best_rank_factors_is_the_truncated_svd() -> None:
    # ΔW = diag(0.5, 1) from two rank-1 parts: the best rank-1 approximation keeps the 1.
    a, b = torch.eye(2), torch.diag(torch.tensor([0.5, 1.0]))
    a1, b1 = best_rank_factors(a, b, 1, fallback_a=torch.eye(2))
    assert torch.allclose(b1 @ a1, torch.tensor([[0.0, 0.0], [0.0, 1.0]]), atol=1e-6)
    assert torch.allclose(a1 @ a1.T, torch.eye(1), atol=1e-6)
    a2, b2 = best_rank_factors(a, b, 2, fallback_a=torch.eye(2))
    assert torch.allclose(b2 @ a2, b @ a, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 9, generator=g), torch.randn(7, 6, generator=g)
    u, s, vh = torch.linalg.svd((b @ a).double())
    a3, b3 = best_rank_factors(a, b, 3, fallback_a=a)
    assert torch.allclose((b3 @ a3).double(), u[:, :3] @ torch.diag(s[:3]) @ vh[:3], atol=1e-4)


def test_missing_directions_are_completed_not_dead() -> None:
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[2.0], [0.0]])  # rank 1, asked for 3
    a3, b3 = best_rank_factors(a, b, 3, fallback_a=torch.ones(3, 3) + torch.eye(3))
    assert torch.allclose(a3 @ a3.T, torch.eye(3), atol=1e-6)  # every row alive and orthonormal
    assert torch.allclose(b3 @ a3, b @ a, atol=1e-6)


def test_fresh_factors_are_seeded_like_peft() -> None:
    like_a, like_b = torch.zeros(8, 16, dtype=torch.bfloat16), torch.zeros(5, 8)
    a, b = fresh_factors(2, like_a, like_b, "s")
    assert a.shape == (2, 16) and a.dtype == torch.bfloat16 and b.shape == (5, 2) and not b.any()
    assert a.float().abs().max() <= 1 / 16**0.5 + 1e-3  # Kaiming-uniform bound 1/√in
    assert torch.equal(a, fresh_factors(2, like_a, like_b, "s")[0])
    assert not torch.equal(a, fresh_factors(2, like_a, like_b, "t")[0])
