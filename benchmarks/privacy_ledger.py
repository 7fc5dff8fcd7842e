"""Does the ledger ever under-report ε? The ledger's ε against the exact (PLD) ε of the mechanism that ran.

Each client-DP configuration runs real rounds of the server's and parties' privacy stages (``ServerPrivacy``,
``PartyPrivacy``, the local backend; hand-made updates, no model) and watches what they actually do: the std of
every Gaussian added to the updates and to the adaptive-clipping count, the clip norm, and the rate each round's
selection was drawn at. From those it composes the executed mechanism (the update and count Gaussians of a round
form one Gaussian with ``z = (z_Δ⁻² + z_b⁻²)^(−½)``, the count's sensitivity being ½ for the centred indicator)
and asks dp_accounting's PLD accountant for its ε. The ledger's figure is ``dp_epsilon`` as the run reported it
(RDP by default). The DP-SGD row runs real DP-SGD steps through ``make_private`` and compares the ε the party
reports with PLD of the steps Opacus recorded. A ledger ε below the exact one is a bug.

    python benchmarks/privacy_ledger.py            # writes the markdown table to stdout (a few seconds)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the stages' in-memory federation

from dp_accounting import dp_event, pld

from mpctf.privacy import adaptive_clip, dp
from mpctf.privacy.accountant import epsilon_for
from privacy_support import NAMES, Federation, server_for

DELTA = 1e-5
ROUNDS = 10
DP = {"noise_multiplier": 1.0, "clip_norm": 0.01}
ADAPTIVE = {**DP, "adaptive_clipping": {"count_noise_std": 1.0}}

CASES: list[tuple[str, dict[str, Any], dict[str, Any] | None, int]] = [
    # (name, privacy, federation, parties reachable per round)
    ("central, fixed clip, every party", {"client_dp": DP}, None, 3),
    ("central, adaptive clipping", {"client_dp": ADAPTIVE}, None, 3),
    ("central, 2 of 3 per round", {"client_dp": DP}, {"parties_per_round": 2}, 3),
    ("central, 2 per round, only 2 online", {"client_dp": DP}, {"parties_per_round": 2}, 2),
    (
        "distributed + SecAgg + adaptive clipping",
        {"client_dp": {**ADAPTIVE, "mode": "distributed"}, "secure_aggregation": {}},
        None,
        3,
    ),
]


class Watch:
    """Records the std of every Gaussian the stages add (updates and count) during one round."""

    def __init__(self) -> None:
        self.update_stds: list[float] = []
        self.count_stds: list[float] = []
        self._noise = dp.add_gaussian_noise
        self._clipper_update = adaptive_clip.AdaptiveClipper.update

    def __enter__(self) -> Watch:
        watch = self

        def noise(tensors, std, generator):
            watch.update_stds.append(std)
            return watch._noise(tensors, std, generator)

        def clipper_update(clipper, centred_sum, num_parties, generator):
            if generator is not None:
                watch.count_stds.append(clipper.params.count_noise_std)
            return watch._clipper_update(clipper, centred_sum, num_parties, generator)

        dp.add_gaussian_noise = noise
        adaptive_clip.AdaptiveClipper.update = clipper_update
        return self

    def __exit__(self, *exc: object) -> None:
        dp.add_gaussian_noise = self._noise
        adaptive_clip.AdaptiveClipper.update = self._clipper_update


def executed_multiplier(watch: Watch, clip_norm: float, instructions: dict[str, Any], least: int) -> float:
    """The round's Gaussian multiplier as executed: the noise that reaches the sum over its sensitivity."""
    if instructions.get("noise_std"):  # distributed: the sum carries (at worst) `least` parties' shares
        update_var = least * instructions["noise_std"] ** 2
        count_var = least * instructions.get("count_noise_std", 0.0) ** 2
    else:
        update_var = sum(s**2 for s in watch.update_stds)
        count_var = sum(s**2 for s in watch.count_stds)
    inverse = clip_norm**2 / update_var
    if count_var:
        inverse += 0.5**2 / count_var  # the centred indicator moves the count by at most ½
    return inverse**-0.5


def exact_epsilon(rounds: list[tuple[float, float]]) -> float:
    accountant = pld.PLDAccountant()
    for q, z in rounds:
        accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)))
    return float(accountant.get_epsilon(DELTA))


def run_case(privacy: dict[str, Any], federation: dict[str, Any] | None, reachable: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        fed = Federation(Path(tmp), privacy, federation=federation)
        server = server_for(fed)
        executed, ledger = [], 0.0
        begin = server.begin_round
        for r in range(1, ROUNDS + 1):
            per_round = (federation or {}).get("parties_per_round", 3)
            selected = sorted(NAMES[:reachable][:per_round])
            seen: dict[str, Any] = {}

            def spy(*args, _begin=begin, _seen=seen, **kw):
                out = _begin(*args, **kw)
                _seen.update(next(iter(out.values()))["client_dp"])  # what the parties were told
                return out

            server.begin_round = spy
            clip = server.stage("client_dp").clip_norm
            with Watch() as watch:
                fed.round(server, r, selected=selected, reachable=reachable)
            least = server.hider.least_summed(len(selected)) if seen.get("noise_std") else 0
            executed.append(
                (server.last_metrics["dp_sampling_rate"], executed_multiplier(watch, clip, seen, least))
            )
            ledger = server.last_metrics["dp_epsilon"]
    return {"ledger": ledger, "exact": exact_epsilon(executed), "q": executed[-1][0], "z": executed[-1][1]}


def dpsgd_case(steps: int = 40, noise: float = 1.0) -> dict[str, float]:
    """Real DP-SGD steps through ``make_private`` on a small linear model (Poisson batches of expected size 8
    from 64 rows): the ε the party reports (Opacus's RDP) against PLD of the steps Opacus recorded as run."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from mpctf.privacy.dpsgd import make_private

    torch.manual_seed(0)
    model = torch.nn.Linear(16, 2)
    data = TensorDataset(torch.randn(64, 16), torch.randint(0, 2, (64,)))
    private = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        DataLoader(data, batch_size=8),
        noise_multiplier=noise,
        max_grad_norm=1.0,
    )
    done = 0
    while done < steps:
        for x, y in private.data_loader:
            if done == steps:
                break
            private.optimizer.zero_grad()
            if len(x):
                torch.nn.functional.cross_entropy(private.model(x), y).backward()
            private.step(empty_batch=len(x) == 0)
            done += 1
    ledger = private.epsilon(DELTA)
    history = private.accountant_state()["history"]  # (noise multiplier, sample rate, steps) as run
    accountant = pld.PLDAccountant()
    for sigma, q, n in history:
        accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), int(n))
    private.release()
    return {
        "ledger": ledger,
        "exact": float(accountant.get_epsilon(DELTA)),
        "q": history[0][1],
        "z": history[0][0],
    }


def main() -> None:
    print("| configuration | q per round | executed z | ledger ε (RDP) | exact ε (PLD) | ledger ≥ exact |")
    print("|---|---:|---:|---:|---:|:---:|")
    for name, privacy, federation, reachable in CASES:
        row = run_case(privacy, federation, reachable)
        ok = "yes" if row["ledger"] >= row["exact"] - 1e-6 else "**NO**"
        print(
            f"| {name} | {row['q']:.3g} | {row['z']:.4g} | {row['ledger']:.3f} | {row['exact']:.3f} | {ok} |"
        )
    row = dpsgd_case()
    ok = "yes" if row["ledger"] >= row["exact"] - 1e-6 else "**NO**"
    print(
        f"| DP-SGD in a party, 40 steps (Opacus) | {row['q']:.3g} | {row['z']:.4g} | {row['ledger']:.3f} "
        f"| {row['exact']:.3f} | {ok} |"
    )
    # Before the fix the indicator went out as 0/1 (sensitivity 1): the count's multiplier was σ_b, not 2σ_b.
    z_old = (adaptive_clip.update_noise_multiplier(1.0, 1.0) ** -2 + 1.0**-2) ** -0.5
    old = epsilon_for(noise_multiplier=z_old, sampling_rate=1.0, steps=ROUNDS, delta=DELTA)
    claimed = epsilon_for(noise_multiplier=1.0, sampling_rate=1.0, steps=ROUNDS, delta=DELTA)
    print(
        f"\nBefore the fix, adaptive clipping with an uncentred 0/1 indicator ran z = {z_old:.3f} "
        f"(ε {old:.2f} over {ROUNDS} rounds) while its ledger said ε {claimed:.2f}."
    )


if __name__ == "__main__":
    main()
