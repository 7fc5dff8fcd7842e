import pytest
import torch

from mpctf.aggregation.fedprox import FedProx, FedProxParams, ProximalHooks


def test_server_side_is_fedavg(upd) -> None:
    s = FedProx(FedProxParams(mu=0.5))
    s.begin_round(1, {"w": torch.tensor([1.0, 1.0])})
    s.accumulate(upd("a", samples=1, w=[1.0, 0.0]))
    s.accumulate(upd("b", samples=3, w=[0.0, 3.0]))
    assert torch.allclose(s.finalize()["w"], torch.tensor([1.25, 3.25]))
    assert s.party_instructions() == {"mu": 0.5}


def test_proximal_term_and_its_gradient_by_hand() -> None:
    hooks = FedProx.party_hooks({"mu": 0.5}, {}, "a", {"w": torch.tensor([0.0, 1.0])}, {})
    p = torch.nn.Parameter(torch.tensor([1.0, 3.0]))
    loss = hooks.extra_loss({"w": p})
    # μ/2 · ‖p − x‖² = 0.25 · (1 + 4) = 1.25; gradient μ (p − x) = [0.5, 1.0]
    assert loss is not None and loss.item() == pytest.approx(1.25)
    loss.backward()
    assert torch.allclose(p.grad, torch.tensor([0.5, 1.0]))


def test_zero_mu_adds_nothing_and_unknown_tensor_is_named() -> None:
    assert ProximalHooks(0.0, {}).extra_loss({"w": torch.nn.Parameter(torch.ones(1))}) is None
    with pytest.raises(ValueError, match="'u' is not in the global state"):
        ProximalHooks(1.0, {"w": torch.zeros(1)}).extra_loss({"u": torch.nn.Parameter(torch.ones(1))})


def test_mu_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match=r"`mu` must be >= 0, got -1\.0"):
        FedProxParams(mu=-1.0)
