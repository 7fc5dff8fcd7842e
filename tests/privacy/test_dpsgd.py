"""Opacus DP-SGD on a tiny PEFT LoRA Llama: only the adapter gets per-example gradients and changes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mpctf.privacy.accountant import epsilon_for

pytest.importorskip("opacus")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from mpctf.data.task_base import next_token_pairs  # noqa: E402
from mpctf.privacy.dpsgd import make_private, sequence_mean_lm_loss  # noqa: E402

VOCAB = 128


def tiny_lora_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return peft.get_peft_model(transformers.LlamaForCausalLM(config), lora)


def loader(num: int = 24, batch_size: int = 4, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (num, 10), generator=generator)
    return DataLoader(TensorDataset(tokens), batch_size=batch_size)


def train_epoch(private) -> list[int]:
    sizes = []
    for (batch,) in private.data_loader:
        sizes.append(len(batch))
        private.optimizer.zero_grad()
        if len(batch) > 0:
            sequence_mean_lm_loss(*next_token_pairs(private.model(input_ids=batch).logits, batch)).backward()
        private.step(empty_batch=len(batch) == 0)
    return sizes


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure_mode and the optimizer's distributed mode
        yield


def private_training(model, noise_multiplier=1.0, max_grad_norm=1.0, **kwargs):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    return make_private(
        model,
        optimizer,
        loader(),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        noise_generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


@pytest.mark.slow
def test_only_lora_parameters_get_per_sample_grads_and_change():
    model = tiny_lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    private = private_training(model)
    (batch,) = next(iter(loader(batch_size=4)))
    sequence_mean_lm_loss(*next_token_pairs(private.model(input_ids=batch).logits, batch)).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert "lora_" in name
            assert p.grad_sample.shape == (4, *p.shape)
        else:
            assert getattr(p, "grad_sample", None) is None
    private.optimizer.zero_grad()
    train_epoch(private)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name
    private.release()
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())
    state = peft.get_peft_model_state_dict(model)
    assert state and all("lora_" in k for k in state)


@pytest.mark.slow
def test_epsilon_matches_the_client_accountant_and_carries_across_rounds():
    model = tiny_lora_model()
    first = private_training(model)
    steps = len(train_epoch(first))
    q = 4 / 24
    expected = epsilon_for(noise_multiplier=1.0, sampling_rate=q, steps=steps, delta=1e-5)
    assert first.epsilon(1e-5) == pytest.approx(expected, rel=1e-3)
    saved = first.accountant_state()
    first.release()
    second = private_training(model, accountant_state=saved)
    train_epoch(second)
    assert second.epsilon(1e-5) == pytest.approx(
        epsilon_for(noise_multiplier=1.0, sampling_rate=q, steps=2 * steps, delta=1e-5), rel=1e-3
    )
    second.release()


@pytest.mark.slow
def test_per_example_clipping_bounds_the_step_without_noise():
    model = tiny_lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    clip = 1e-3
    private = private_training(model, noise_multiplier=0.0, max_grad_norm=clip)
    (batch,) = next(iter(private.data_loader))
    sequence_mean_lm_loss(*next_token_pairs(private.model(input_ids=batch).logits, batch)).backward()
    private.optimizer.step()
    moved = torch.sqrt(
        sum(((p.detach() - before[n]) ** 2).sum() for n, p in model.named_parameters() if n in before)
    )
    # lr 0.5 × (sum of ≤ clip-norm per-example grads) / expected batch size 4
    assert float(moved) <= 0.5 * clip * len(batch) / 4 + 1e-9
    private.release()


@pytest.mark.slow
def test_empty_poisson_batch_step_adds_noise_only():
    model = tiny_lora_model()
    private = private_training(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    private.optimizer.zero_grad()
    private.step(empty_batch=True)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    private.release()


def test_optimizer_with_frozen_parameters_is_refused():
    model = tiny_lora_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="frozen parameter"):
        make_private(model, optimizer, loader(), noise_multiplier=1.0, max_grad_norm=1.0)


def test_sequence_mean_loss_hand_computed_and_per_example():
    # vocab 2, uniform logits: every token costs log 2; one label ignored
    logits = torch.zeros(2, 3, 2)
    labels = torch.tensor([[0, 1, 0], [1, -100, 0]])
    assert float(sequence_mean_lm_loss(logits, labels)) == pytest.approx(torch.log(torch.tensor(2.0)).item())
    # the batch loss is the mean of the single-example losses, whatever the other examples' lengths
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))
    labels[1, 2:] = -100
    singles = [sequence_mean_lm_loss(logits[i : i + 1], labels[i : i + 1]) for i in range(3)]
    assert float(sequence_mean_lm_loss(logits, labels)) == pytest.approx(float(sum(singles) / 3))
