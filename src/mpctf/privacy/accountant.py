"""The client-level privacy ledger: ε after a number of DP-FedAvg rounds, with Google's ``dp_accounting``.

Each round samples ``parties_per_round`` of the ``n_r`` parties reachable that round and releases a Gaussian
mechanism with noise multiplier ``σ`` on the sum of their clipped updates. We account it as a Poisson-subsampled
Gaussian with ``q_r = min(parties_per_round, n_r) / n_r``, the rate of that round (so a round with every
reachable party selected counts at ``q = 1``, whatever the configured number of parties). The amplification
assumes the selection is secret: the round loop draws it from the OS's CSPRNG when client DP samples. It samples
a fixed number without replacement, which is approximated here as Poisson sampling at the same rate (the
standard practice of DP-FedAvg and DP-SGD papers and libraries; exact fixed-size accounting needs the
replace-one relation). At ``q = 1`` no approximation is involved.

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


def epsilon_of_rounds(
    *, noise_multiplier: float, rates: list[tuple[float, int]], delta: float, method: str = "rdp"
) -> float:
    """ε of rounds at varying sampling rates: ``rates`` lists ``(q, how many rounds)`` (0 for none)."""
    rates = [(q, n) for q, n in rates if n > 0]
    if not rates:
        return 0.0
    accountant = _accountant(method)
    for q, n in rates:
        accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(noise_multiplier)), n)
    return float(accountant.get_epsilon(delta))


class ClientDpAccountant:
    """Running (ε, δ) of client-level DP; one :meth:`step` per round that released a noised sum.

    Each round is recorded with the sampling rate it actually had (parties are sampled from those reachable
    that round, so ``q`` changes when parties are missing); ``sampling_rate`` given here is the planned rate,
    used for rounds recorded without one and for what-if forecasts (:meth:`epsilon_after`).
    """

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
        _check_rate(sampling_rate)
        if not 0 < delta < 1:
            raise ValueError(f"`delta` must be in (0, 1), got {delta}")
        if method not in ("rdp", "pld"):
            raise ValueError(f"`method` must be 'rdp' or 'pld', got {method!r}")
        self.noise_multiplier = noise_multiplier
        self.sampling_rate = sampling_rate
        self.delta = delta
        self.method = method
        #: ``[q, rounds]`` runs in the order they were recorded.
        self.history: list[list[float | int]] = []

    @property
    def steps(self) -> int:
        """Rounds recorded so far."""
        return sum(int(n) for _, n in self.history)

    def step(self, n: int = 1, *, sampling_rate: float | None = None) -> None:
        """Record ``n`` more rounds at ``sampling_rate`` (the planned rate when ``None``)."""
        if n < 0:
            raise ValueError(f"`n` must be >= 0, got {n}")
        q = self.sampling_rate if sampling_rate is None else _check_rate(sampling_rate)
        if n == 0:
            return
        if self.history and self.history[-1][0] == q:
            self.history[-1][1] = int(self.history[-1][1]) + n
        else:
            self.history.append([q, n])

    def _epsilon(self, rates: list[tuple[float, int]]) -> float:
        return epsilon_of_rounds(
            noise_multiplier=self.noise_multiplier, rates=rates, delta=self.delta, method=self.method
        )

    def _recorded(self) -> list[tuple[float, int]]:
        return [(float(q), int(n)) for q, n in self.history]

    def epsilon_after(self, steps: int) -> float:
        """ε after ``steps`` rounds in total: the recorded ones, then more at the planned rate (what-if).

        With ``steps`` below the recorded count, the first ``steps`` recorded rounds.
        """
        rates, left = [], steps
        for q, n in self._recorded():
            rates.append((q, min(n, left)))
            left -= rates[-1][1]
        rates.append((self.sampling_rate, left))
        return self._epsilon(rates)

    def epsilon_with_round(self, sampling_rate: float) -> float:
        """ε once one more round at ``sampling_rate`` is recorded (the ledger is unchanged)."""
        return self._epsilon([*self._recorded(), (_check_rate(sampling_rate), 1)])

    def epsilon(self) -> float:
        """ε spent so far at this accountant's δ, each round at the rate it had."""
        return self._epsilon(self._recorded())

    def epsilon_without_sampling(self) -> float:
        """ε against someone who knows which rounds each party was in (every recorded round at ``q = 1``)."""
        return self._epsilon([(1.0, self.steps)])

    def max_steps_within(self, epsilon_max: float) -> int:
        """Largest total number of rounds with ε ≤ ``epsilon_max`` (:data:`MAX_STEPS` if never exceeded).

        A forecast at the planned rate for the rounds not yet recorded; the round loop still checks each round
        at the rate it will really have (:meth:`epsilon_with_round`). The result does not depend on how many
        rounds were already recorded beyond their rates, so it can be smaller than :attr:`steps` after a budget
        change. Exponential then binary search: about ``2·log₂(result)`` evaluations of ε (tens of ms each with
        RDP, around a second each with PLD), so call it once per run, not per round.
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
            "history": [list(run) for run in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the recorded rounds; refuses a ledger kept under other parameters (it would misreport ε).

        The planned sampling rate may differ (a resumed run can select differently): each recorded round keeps
        the rate it had. A ledger saved before rates were recorded per round holds its rounds at its own rate.
        """
        if state.get("type") != _TAG:
            raise ValueError(f"state of type {state.get('type')!r} cannot be loaded into {_TAG!r}")
        for key in ("noise_multiplier", "delta", "method"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"privacy ledger was kept with {key}={state[key]!r}, this run uses {getattr(self, key)!r}"
                )
        history = state.get("history")
        if history is None:
            history = [[float(state["sampling_rate"]), int(state["steps"])]] if state["steps"] else []
        self.history = [[float(q), int(n)] for q, n in history]


def _check_rate(q: float) -> float:
    if not 0 < q <= 1:
        raise ValueError(f"`sampling_rate` must be in (0, 1], got {q}")
    return q
