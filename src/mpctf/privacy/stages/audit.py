"""In-run empirical privacy estimation as a privacy stage: canaries that check the ledger from the same run.

Andrew et al. (ICLR 2024) insert canary clients whose update is ``C·c_j`` along a random unit direction. Here
the canaries join a shadow of the released model instead of the model itself: after client DP has noised and
divided the round's sum, each of ``k`` canaries takes part with the round's sampling rate ``q`` and adds
``C·c_j / m`` to a shadow copy of ``θ_t − θ_0`` (the released deltas summed, which FedAvg's global model is).
Training never sees them, so the audit costs no accuracy, and the shadow is exactly what the release would have
been with those canaries among the parties: the same noise, the same clip norm, the same divisor. ``k'`` more
directions are never inserted. After every round the cosines of both give the estimate ε̂ with its 95 % interval
and a 95 % lower bound (:mod:`mpctf.privacy.audit`); a lower bound or a whole interval above the ledger's ε
means the mechanism that ran gives less privacy than the ledger says, and the run reports "privacy accounting
violated".

The statistic is computed on at most ``max_dim`` coordinates (a seeded random subset of the trainable state):
the canaries are then random directions of that subspace, so the cost a round is bounded whatever the model
(``benchmarks/privacy_overhead.py`` measures it). With a server optimiser other than plain averaging (FedAdam,
FedAvgM) the released mean is not added to the model as it is; the shadow still sums the released means, which
is what the noise protects.

With ``canary_rows`` the stage also reads what each party's canary rows prove about its sample-level DP-SGD
(:mod:`mpctf.party.canaries`, Steinke, Nasr, Jagielski 2023): the largest lower bound goes into the round's
metrics, and one above the party's own Opacus ε is a violation too.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import torch

from mpctf.messages import NamedTensors, Update
from mpctf.privacy.config import AuditParams
from mpctf.privacy.stages.base import STAGES, Exchange, MechanismTraits, PrivacyStage, RoundState, RunInfo


@STAGES.register("audit")
class AuditStage(PrivacyStage):
    traits = MechanismTraits("empirical privacy audit", audits_dp=True)
    order = 5
    params: AuditParams

    def __init__(self, params: AuditParams, run: RunInfo) -> None:
        super().__init__(params, run)
        #: Secret: whoever knows it could tell canary directions apart from others.
        self.seed = secrets.randbits(31)
        self.dim = 0  # size of the trainable state, once seen
        self.coordinates: torch.Tensor | None = None  # the subset read, once the state's size is known
        self.released: torch.Tensor | None = None  # Σ_t released mean, on the subset
        self.shadow: torch.Tensor | None = None  # Σ_t canaries' share of the shadow release
        self.inserted = [0] * params.canaries  # rounds each canary took part in

    def _flat(self, tensors: NamedTensors) -> torch.Tensor:
        flat = torch.cat([tensors[k].detach().reshape(-1).float().cpu() for k in sorted(tensors)])
        if self.coordinates is None:
            self.dim = flat.numel()
            self.coordinates = self._subset()
            self.released = torch.zeros(self.coordinates.numel())
            self.shadow = torch.zeros(self.coordinates.numel())
        return flat[self.coordinates]

    def _subset(self) -> torch.Tensor:
        keep = min(self.dim, self.params.max_dim)
        if keep == self.dim:
            return torch.arange(self.dim)
        chosen = torch.randperm(self.dim, generator=torch.Generator().manual_seed(self.seed))[:keep]
        return torch.sort(chosen).values

    def _direction(self, index: int) -> torch.Tensor:
        from mpctf.privacy.audit import canary_direction

        assert self.coordinates is not None
        return canary_direction(self.seed, index, self.coordinates.numel())

    def observe(self, state: RoundState, update: Update) -> None:
        """A party's one-run bound on its DP-SGD's ε (``canary_rows``, :mod:`mpctf.party.canaries`), against the
        ε its own ledger reports."""
        bound = update.metrics.get("audit_rows_epsilon_lower_bound")
        if bound is None:
            return
        key = "audit_rows_epsilon_lower_bound"
        state.metrics[key] = max(bound, state.metrics.get(key, 0.0))
        ledger = update.metrics.get("dp_sgd_epsilon", math.inf)
        if bound > ledger:
            state.metrics["audit_violated"] = True
            state.warnings.append(
                f"privacy accounting violated: party {update.party!r}'s canary rows give a lower bound "
                f"{bound:.4g} on its DP-SGD epsilon, above its ledger's {ledger:.4g}"
            )

    def finish(self, state: RoundState, total: NamedTensors, exchange: Exchange) -> NamedTensors:
        """Fold the round's released mean and its canaries into the shadow; estimate ε from the cosines."""
        if "dp_clip_norm" not in state.metrics:  # no client-level DP: only the parties' canary rows audit
            return total
        released = self._flat(total)
        assert self.released is not None and self.shadow is not None
        self.released += released
        clip, divisor = state.metrics["dp_clip_norm"], len(state.drawn)
        draw = secrets.SystemRandom()
        for j in range(self.params.canaries):
            if draw.random() < state.sampling_rate:
                self.inserted[j] += 1
                self.shadow += self._direction(j) * (clip / divisor)
        ledger = state.metrics.get("dp_epsilon", math.inf)
        rows_violated = state.metrics.get("audit_violated", False)  # a party's canary rows (observe)
        estimate = self._estimate(ledger, state.metrics["dp_delta"])
        state.metrics |= estimate | {"audit_violated": estimate["audit_violated"] or rows_violated}
        if estimate["audit_violated"]:
            state.warnings.append(
                f"privacy accounting violated: round {state.round} leaked more than the ledger's epsilon "
                f"{ledger:.4g} (audit lower bound {state.metrics['audit_epsilon_lower_bound']:.4g}, estimate "
                f"{state.metrics['audit_epsilon_estimate']:.4g})"
            )
        return total

    def _estimate(self, ledger_epsilon: float, delta: float) -> dict[str, Any]:
        from mpctf.privacy.audit import epsilon_lower_bound, estimate_epsilon

        assert self.released is not None and self.shadow is not None
        model = self.released + self.shadow
        norm = float(model.norm()) or 1.0
        k = self.params.canaries
        cosines = [float(self._direction(j) @ model) / norm for j in range(k + self.params.unseen)]
        seen = [g for j, g in enumerate(cosines[:k]) if self.inserted[j]]
        unseen = cosines[k:]
        dim = model.numel()
        estimate, low, high = (
            estimate_epsilon(seen, unseen, dim, delta) if len(seen) >= 2 else (0.0, 0.0, 0.0)
        )
        bound = epsilon_lower_bound(seen, unseen, delta, self.params.alpha)
        return {
            "audit_epsilon_estimate": estimate,
            "audit_epsilon_interval": [low, high],
            "audit_epsilon_lower_bound": bound,
            "audit_canaries_inserted": len(seen),
            "audit_dim": dim,
            # Loud only when it cannot be chance: the rigorous bound, or the estimate's whole interval, above.
            "audit_violated": bound > ledger_epsilon or low > ledger_epsilon,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "seed": self.seed,
            "dim": self.dim,
            "released": self.released,
            "shadow": self.shadow,
            "inserted": list(self.inserted),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seed, self.dim = int(state["seed"]), int(state["dim"])
        self.coordinates = self._subset() if self.dim else None
        self.released, self.shadow = state["released"], state["shadow"]
        self.inserted = list(state["inserted"])
