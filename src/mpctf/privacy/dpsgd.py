"""Sample-level DP-SGD inside one party, with Opacus (Abadi et al., 2016, "Deep Learning with Differential
Privacy").

Each step Poisson-samples a batch ``B`` (every example independently with rate ``q = batch_size / |D|``),
clips every per-example gradient and adds Gaussian noise before the optimizer sees the gradient:

    g̃ = (Σ_{i∈B} g_i · min(1, C / ‖g_i‖₂) + N(0, σ²C² I)) / (q·|D|)

Only trainable parameters get per-example gradients, so with a PEFT LoRA model the cost is that of the
adapter: Opacus's ``hooks`` mode covers the ``nn.Linear`` layers LoRA adds. Adapters on other layer types
(e.g. LoRA on embeddings, which holds raw parameters rather than modules) need
``grad_sample_mode="functorch"``.

The party's ε comes from Opacus's accountant. It composes every step the party ever took, as if every example
could be in every step: a safe upper bound when the party trains on a different chunk of its data each round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch.utils.data import DataLoader

GradSampleMode = Literal["hooks", "functorch", "ew"]


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: train with these three, read ε from :meth:`epsilon`."""

    model: torch.nn.Module
    optimizer: DPOptimizer
    data_loader: DataLoader
    engine: PrivacyEngine

    def epsilon(self, delta: float) -> float:
        """ε spent by this party so far (all rounds whose accountant state was carried in) at ``delta``."""
        return float(self.engine.get_epsilon(delta))

    def accountant_state(self) -> dict[str, Any]:
        """JSON-able ledger to pass back as ``accountant_state`` next round (or to checkpoint)."""
        state = self.engine.accountant.state_dict()
        return {"mechanism": state["mechanism"], "history": [list(h) for h in state["history"]]}

    def step(
        self, *, empty_batch: bool = False, add_public_gradient: Callable[[], None] | None = None
    ) -> None:
        """Clip and noise the per-example gradients, then update. An empty Poisson batch (``backward`` not run)
        is a noise-only step: Llama and others cannot run a 0-row batch, and skipping the step would bias
        training and break the accounting, which counts every step.

        ``add_public_gradient`` runs between the noise and the update, for gradient terms that do not depend on
        the data (FedProx's proximal term): Opacus replaces ``.grad`` with the noised per-example sum, so a term
        added before the step would be lost, and adding it after the noise spends no privacy.
        """
        if empty_batch:
            for p in trainable_parameters(self.model):
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        # DPOptimizer.step() is pre_step() (clip, noise, scale, account) followed by the wrapped optimizer's step.
        if self.optimizer.pre_step():
            if add_public_gradient is not None:
                add_public_gradient()
            self.optimizer.original_optimizer.step()

    def release(self) -> None:
        """Remove Opacus's hooks and per-sample gradients so the model is a plain module again."""
        self.model.cleanup()  # type: ignore[operator]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: Literal["rdp", "prv", "gdp"] = "rdp",
    accountant_state: dict[str, Any] | None = None,
    grad_sample_mode: GradSampleMode = "hooks",
    poisson_sampling: bool = True,
    noise_generator: torch.Generator | None = None,
) -> PrivateTraining:
    """Wrap a (PEFT) model, its optimizer and data loader for DP-SGD.

    ``optimizer`` must hold only trainable parameters (those are the ones that get per-example gradients and
    noise). ``accountant_state`` restores the ledger of earlier rounds, so ε keeps growing across rounds.
    The loss must be a mean over examples (see :func:`sequence_mean_lm_loss`). With Poisson sampling a batch
    can be empty: then call :meth:`PrivateTraining.step` with ``empty_batch=True`` and no forward/backward.
    """
    if noise_multiplier < 0 or max_grad_norm <= 0:
        raise ValueError(
            f"need noise_multiplier >= 0 and max_grad_norm > 0, got {noise_multiplier}, {max_grad_norm}"
        )
    trainable = {id(p) for p in trainable_parameters(model)}
    if not trainable:
        raise ValueError("the model has no trainable parameters: nothing to train privately")
    frozen = [p for group in optimizer.param_groups for p in group["params"] if id(p) not in trainable]
    if frozen:
        raise ValueError(
            f"the optimizer holds {len(frozen)} frozen parameter(s); give it only trainable ones"
        )
    engine = PrivacyEngine(accountant=accountant)
    if accountant_state is not None:
        if accountant_state.get("mechanism") != accountant:
            raise ValueError(
                f"accountant state is for {accountant_state.get('mechanism')!r}, not {accountant!r}"
            )
        engine.accountant.load_state_dict(
            {"history": [tuple(h) for h in accountant_state["history"]], "mechanism": accountant}
        )
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=poisson_sampling,
        grad_sample_mode=grad_sample_mode,
        noise_generator=noise_generator,
    )
    return PrivateTraining(private_model, private_optimizer, private_loader, engine)


def sequence_mean_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Causal-LM loss averaged over tokens within each sequence, then over sequences.

    Hugging Face's default averages over all tokens of the batch, which ties one example's gradient to the
    other examples' lengths; per-example clipping then no longer bounds one example's influence. Here example
    ``i``'s term depends on example ``i`` only, and the batch mean is what Opacus's ``loss_reduction="mean"``
    expects. ``logits[:, j]`` scores ``targets[:, j]``; targets equal to ``ignore_index`` do not count.
    """
    token_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).view(targets.shape)
    counts = (targets != ignore_index).sum(dim=1).clamp(min=1)
    return (token_loss.sum(dim=1) / counts).mean()
