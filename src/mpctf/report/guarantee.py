"""The run's privacy guarantee in sentences a compliance officer can read, from what the run recorded.

Every clause comes from a record the code wrote while it ran (the mechanism, the rate each round was sampled at,
how the selection was drawn, the ε of the last accounted round), never from the config alone; what the
guarantee assumes is said next to it, and a run that voided an assumption gets a warning.
"""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]


def guarantee_lines(setup: Record | None, rounds: list[Record], parties: list[Record]) -> list[str]:
    """The guarantee sentence and its warnings (empty when the run used no privacy mechanism)."""
    lines: list[str] = []
    accounted = [r for r in rounds if "dp_epsilon" in r]
    mechanism = setup.get("mechanism", "") if setup else ""
    hidden_by = setup.get("hidden_by") if setup else None
    if accounted:
        lines.append(_client_dp_sentence(accounted[-1], mechanism, hidden_by is not None))
    elif hidden_by:
        lines.append(
            f"Guarantee: no differential privacy. {hidden_by.capitalize()} keeps each party's update from an "
            "honest-but-curious server, which learns only each round's sum; the released model itself is not "
            "protected."
        )
    dpsgd = [p for p in parties if "dp_sgd_epsilon" in p]
    if dpsgd:
        worst = max(p["dp_sgd_epsilon"] for p in dpsgd)
        lines.append(
            f"Sample-level DP-SGD: every training row of a party is protected with ε ≤ {worst:.3g} (the largest "
            "party ε Opacus reported), against anyone who sees that party's updates or the model."
        )
    lines += _audit_lines(accounted)
    lines += _row_audit_lines(parties)
    lines += _warnings(setup, accounted, parties)
    return [*lines, ""] if lines else []


def _audit_lines(accounted: list[Record]) -> list[str]:
    """The empirical estimate next to the ledger's ε, and a loud line if the run contradicts its ledger."""
    audited = [r for r in accounted if "audit_epsilon_estimate" in r]
    if not audited:
        return []
    last = audited[-1]
    low, high = last["audit_epsilon_interval"]
    lines = [
        f"Empirical check ({last['audit_canaries_inserted']} canaries, in-run estimation): ε̂ = "
        f"{last['audit_epsilon_estimate']:.3g} (95 % interval {low:.3g}–{high:.3g}), lower bound "
        f"{last['audit_epsilon_lower_bound']:.3g} with 95 % confidence, against the ledger's ε = "
        f"{last['dp_epsilon']:.3g}."
    ]
    violated = [r["round"] for r in audited if r.get("audit_violated")]
    if violated:
        lines.append(
            f"PRIVACY ACCOUNTING VIOLATED in round(s) {', '.join(map(str, violated))}: the run leaked more than "
            "its ledger says (a lower bound or a whole estimate interval above the ledger's ε); do not rely on "
            "the ε above."
        )
    return lines


def _row_audit_lines(parties: list[Record]) -> list[str]:
    """Each party's one-run lower bound on its DP-SGD's ε (its last round), and a loud line above the ledger."""
    audited = [p for p in parties if "audit_rows_epsilon_lower_bound" in p]
    if not audited:
        return []
    last = {p["party"]: p for p in audited}  # records are in round order
    lines = [
        "Empirical check of DP-SGD (canary rows, one-run audit), lower bound at 95 % confidence against the "
        "party's ledger: "
        + ", ".join(
            f"{name} ε ≥ {p['audit_rows_epsilon_lower_bound']:.3g} (ledger {p['dp_sgd_epsilon']:.3g}, "
            f"{p['audit_rows_correct']:.0f} of {p['audit_rows_guesses']:.0f} guesses right)"
            for name, p in sorted(last.items())
        )
        + "."
    ]
    violated = sorted(
        {p["party"] for p in audited if p["audit_rows_epsilon_lower_bound"] > p["dp_sgd_epsilon"]}
    )
    if violated:
        lines.append(
            f"PRIVACY ACCOUNTING VIOLATED at {', '.join(violated)}: the canary rows prove more leakage than "
            "the party's DP-SGD ledger allows; do not rely on its ε."
        )
    return lines


def _client_dp_sentence(last: Record, mechanism: str, hidden: bool) -> str:
    eps, delta, n = last["dp_epsilon"], last["dp_delta"], last["dp_rounds"]
    known = last.get("dp_epsilon_known_selection", eps)
    secret = last.get("dp_selection") == "os_csprng"
    sampled = (
        "assuming the party selection stays secret (drawn from the OS's CSPRNG)"
        if secret
        else ("with every reachable party in every round (no amplification by sampling)")
    )
    if hidden:
        return (
            f"Guarantee: party-level (ε = {eps:.3g}, δ = {delta:g}) after {n} rounds against other parties and "
            f"anyone who sees the model, {sampled}; against the honest-but-curious server, which knows the "
            f"selection and sees only the noised sum ({mechanism}), ε = {known:.3g}."
        )
    return (
        f"Guarantee: party-level (ε = {eps:.3g}, δ = {delta:g}) after {n} rounds against other parties and anyone "
        f"who sees the model, {sampled}; the server is trusted: it sees each clipped update and adds the noise. "
        f"Against someone who knows which rounds a party was in, ε = {known:.3g}."
    )


def _warnings(setup: Record | None, accounted: list[Record], parties: list[Record]) -> list[str]:
    out = []
    if accounted and any(
        r.get("dp_sampling_rate", 1) < 1 and r.get("dp_selection") != "os_csprng" for r in accounted
    ):
        out.append(
            "Warning: a sampled round's selection was not drawn secretly; its amplification does not hold."
        )
    if any(p.get("secagg_clamped", 0) > 0 for p in parties):
        out.append(
            "Warning: some values were clamped to secure_aggregation.clip_range before masking; with distributed "
            "DP the noise of those values is cut, which the accounting does not cover: raise clip_range."
        )
    clipped = sorted({p for r in accounted for p in r.get("dp_server_clipped", [])})
    if clipped:
        out.append(
            f"Note: the server clipped updates that arrived above the clip norm from {', '.join(clipped)}."
        )
    return out
