"""The client-level privacy ledger: ε after a number of DP-FedAvg rounds, with Google's ``dp_accounting``.

Each round samples ``parties_per_round`` of ``num_parties`` parties and releases a Gaussian mechanism with
noise multiplier ``σ`` on the sum of their clipped updates. We account it as a Poisson-subsampled Gaussian
with ``q = parties_per_round / num_parties``: the round loop samples a fixed number without replacement,
which is approximated here as Poisson sampling at the same rate (the standard practice of DP-FedAvg and
DP-SGD papers and libraries; exact fixed-size accounting needs the replace-one relation and gives a
different, not smaller, ε).

ε is recomputed from ``(σ, q, steps)`` on demand, so the saved state is tiny and exact: RDP (Mironov 2017,
with the conversion of Canonne, Kamath, Steinke 2020) by default, or PLD (Meiser & Mohammadi 2018;
Doroshenko et al. 2022), tighter and slower.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from dp_accounting import dp_event, pld, rdp
from dp_accounting.privacy_accountant import PrivacyAccountant

_TAG = "client_dp_accountant"


class _DropOrderExclusionNotice(logging.Filter):
    """Hide dp_accounting's notice that a fractional RDP order did not converge.

    The library then leaves that order out of the minimum over orders, so the ε it returns is still a valid
    upper bound; the notice fires once per order per evaluation (dozens per call) and would flood run logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in str(record.msg)


logging.getLogger("absl").addFilter(_DropOrderExclusionNotice())
#: Step counts above this are reported as "unbounded": no real run gets there.
MAX_STEPS = 2**40


def sampling_rate(parties_per_round: int, num_parties: int) -> float:
    """``q = parties_per_round / num_parties`` (checked to lie in (0, 1])."""
    if not 0 < parties_per_round <= num_parties:
        raise ValueError(f"`parties_per_round` must be in [1, {num_parties}], got {parties_per_round}")
    return parties_per_round / num_parties


def _accountant(method: str) -> PrivacyAccountant:
    return rdp.RdpAccountant() if method == "rdp" else pld.PLDAccountant()


def epsilon_for(
    *, noise_multiplier: float, sampling_rate: float, steps: int, delta: float, method: str = "rdp"
) -> float:
    """ε of ``steps`` compositions of a Poisson-subsampled Gaussian (0 for no steps, ∞ without noise)."""
    if steps == 0:
        return 0.0
    accountant = _accountant(method)
    event = dp_event.PoissonSampledDpEvent(sampling_rate, dp_event.GaussianDpEvent(noise_multiplier))
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


class ClientDpAccountant:
    """Running (ε, δ) of client-level DP; one :meth:`step` per round that released a noised sum."""

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sampling_rate: float,
        delta: float,
        method: Literal["rdp", "pld"] = "rdp",
    ) -> None:
        if noise_multiplier < 0:
            raise ValueError(f"`noise_multiplier` must be >= 0, got {noise_multiplier}")
        if not 0 < sampling_rate <= 1:
            raise ValueError(f"`sampling_rate` must be in (0, 1], got {sampling_rate}")
        if not 0 < delta < 1:
            raise ValueError(f"`delta` must be in (0, 1), got {delta}")
        if method not in ("rdp", "pld"):
            raise ValueError(f"`method` must be 'rdp' or 'pld', got {method!r}")
        self.noise_multiplier = noise_multiplier
        self.sampling_rate = sampling_rate
        self.delta = delta
        self.method = method
        self.steps = 0

    def step(self, n: int = 1) -> None:
        """Record ``n`` more rounds."""
        if n < 0:
            raise ValueError(f"`n` must be >= 0, got {n}")
        self.steps += n

    def epsilon_after(self, steps: int) -> float:
        """ε after ``steps`` rounds in total (what-if, the ledger is unchanged)."""
        return epsilon_for(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            steps=steps,
            delta=self.delta,
            method=self.method,
        )

    def epsilon(self) -> float:
        """ε spent so far at this accountant's δ."""
        return self.epsilon_after(self.steps)

    def max_steps_within(self, epsilon_max: float) -> int:
        """Largest total number of rounds with ε ≤ ``epsilon_max`` (:data:`MAX_STEPS` if never exceeded).

        The round loop stops before round ``max_steps_within(budget) + 1``; the result does not depend on how
        many rounds were already recorded, so it can be smaller than :attr:`steps` after a budget change.
        Exponential then binary search: about ``2·log₂(result)`` evaluations of ε (tens of ms each with RDP,
        around a second each with PLD), so call it once per run, not per round.
        """
        if epsilon_max <= 0 or self.epsilon_after(1) > epsilon_max:
            return 0
        low, high = 1, 2  # invariant: ε(low) ≤ max; grow high until ε(high) > max
        while self.epsilon_after(high) <= epsilon_max:
            if high >= MAX_STEPS:
                return MAX_STEPS
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            if self.epsilon_after(mid) <= epsilon_max:
                low = mid
            else:
                high = mid
        return low

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": _TAG,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
            "method": self.method,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step count; refuses a ledger kept under other parameters (it would misreport ε)."""
        if state.get("type") != _TAG:
            raise ValueError(f"state of type {state.get('type')!r} cannot be loaded into {_TAG!r}")
        for key in ("noise_multiplier", "sampling_rate", "delta", "method"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"privacy ledger was kept with {key}={state[key]!r}, this run uses {getattr(self, key)!r}"
                )
        self.steps = int(state["steps"])
