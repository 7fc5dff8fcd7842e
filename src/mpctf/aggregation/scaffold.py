"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
ICML), option II control variates.

Update rule. Party ``i`` keeps ``c_i`` across rounds (0 at first) and, from the server's ``x`` and ``c``, runs
``K`` local steps ``y ← y − η_l (g_i(y) − c_i + c)``; then ``c_i⁺ = c_i − c + (x − y) / (K η_l)`` and it sends
``Δy_i = y − x`` and ``Δc_i = c_i⁺ − c_i``. The server, over the set ``S`` of parties that answered and the
number ``N`` of all parties: ``x ← x + η_g Σ_i w_i Δy_i / Σ_i w_i`` (uniform ``w_i`` in the paper) and
``c ← c + Σ_{i∈S} Δc_i / N``.

Exchanged: ``x`` down as the state and ``c`` as the round payload; ``Δy_i`` up as the update and ``Δc_i`` in
its ``extra`` (keys ``delta_c/<name>``). Server state: ``c``. Party state (``party_state``): ``c_i``.

The correction is applied to the parameters after each optimizer step, ``y ← y − η_l (c − c_i)``, which for
plain SGD is the paper's rule exactly. With the local AdamW it keeps ``c`` and ``c_i`` in the units of the
optimizer's steps: ``c_i⁺`` becomes party ``i``'s mean update direction ``(x − y) / (K η_l)`` without the
correction, and the correction swaps it for the parties' mean. Added to the gradients instead, a correction of
that size (order 1 per entry) would swamp gradients of order 1e-3 inside Adam's normalisation, and every party
would step along ``sign(c − c_i)`` whatever its data: measured, accuracy swinging between the two labels from
round to round on the label-skew split. DP-SGD's optimizer would also overwrite a gradient correction with its
noised per-example sum.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from mpctf.aggregation.base import STRATEGIES, PartyHooks, sum_as_float32, weighted_sum_into
from mpctf.aggregation.fedavg import FedAvg, FedAvgParams, update_weight
from mpctf.aggregation.layout import laid_out_like
from mpctf.aggregation.ops import apply_delta, clone_state, require_same_keys, zeros_like_f32
from mpctf.aggregation.params import Positive
from mpctf.aggregation.validate import validate_tensors
from mpctf.errors import UpdateRejected
from mpctf.messages import NamedTensors, Update

DELTA_C = "delta_c/"
_PARTY_C = "scaffold_c"


def option_ii_control(
    *,
    c_party: NamedTensors,
    c_server: NamedTensors,
    global_state: NamedTensors,
    local: NamedTensors,
    steps: int,
    lr: float,
) -> NamedTensors:
    """``c_i⁺ = c_i − c + (x − y_i) / (K η_l)`` in float32 (the paper's option II)."""
    inv = 1.0 / (steps * lr)
    return {
        k: c_party[k] - c_server[k] + (global_state[k].float() - local[k].float()).to(c_party[k].device) * inv
        for k in c_party
    }


class ScaffoldHooks(PartyHooks):
    """Moves the parameters by ``−η_l (c − c_i)`` after every step and computes ``Δc_i`` after training;
    ``c_i`` lives in ``party_state`` so it survives across rounds."""

    def __init__(
        self, c_server: NamedTensors, global_state: NamedTensors, party_state: dict[str, Any]
    ) -> None:
        require_same_keys(c_server, global_state, "scaffold's server control variate")
        self._c = {k: v.float() for k, v in c_server.items()}
        self._state = party_state
        saved = party_state.get(_PARTY_C)
        self._c_party: NamedTensors = saved if saved is not None else zeros_like_f32(self._c)
        self._corrections: NamedTensors = {}

    def after_step(self, params: dict[str, torch.nn.Parameter], lr: float) -> None:
        for name, p in params.items():
            p.sub_(self._correction(name, p), alpha=lr)

    def _correction(self, name: str, param: torch.Tensor) -> torch.Tensor:
        # Computed once per round next to the parameter: c and c_i do not change while the party trains.
        if name not in self._corrections:
            if name not in self._c:
                raise ValueError(f"scaffold: trainable tensor {name!r} has no server control variate")
            self._corrections[name] = laid_out_like(self._c[name] - self._c_party[name], param)
        return self._corrections[name]

    def after_training(
        self, local: NamedTensors, global_state: NamedTensors, steps: int, lr: float
    ) -> NamedTensors:
        if steps <= 0:
            # No step was taken, so nothing was learnt about the gradients: c_i stays, Δc_i is 0.
            return {DELTA_C + k: torch.zeros_like(v) for k, v in self._c_party.items()}
        new = option_ii_control(
            c_party=self._c_party,
            c_server=self._c,
            global_state=global_state,
            local=local,
            steps=steps,
            lr=lr,
        )
        self._state[_PARTY_C] = new
        return {DELTA_C + k: new[k] - self._c_party[k] for k in new}


class ScaffoldParams(FedAvgParams):
    weight: Literal["samples", "tokens", "uniform"] = "uniform"
    global_lr: Positive = 1.0


@STRATEGIES.register("scaffold")
class Scaffold(FedAvg):
    aggregates_by_mean = False

    Params = ScaffoldParams
    params: ScaffoldParams

    def __init__(self, params: ScaffoldParams | None = None) -> None:
        super().__init__(params)
        self._c: NamedTensors | None = None

    def begin_round(self, round_num: int, global_state: NamedTensors) -> None:
        if not self.parties:
            raise ValueError(
                "scaffold needs configure_parties() before the first round: c moves by Σ Δc_i / N"
            )
        super().begin_round(round_num, global_state)
        if self._c is None:
            self._c = zeros_like_f32(global_state)
        require_same_keys(self._c, global_state, "scaffold's server control variate")
        self._dc_sum: NamedTensors | None = None

    def round_payload(self) -> NamedTensors:
        if self._c is None:
            raise RuntimeError("round_payload() called before begin_round()")
        return dict(self._c)

    @classmethod
    def party_hooks(
        cls,
        instructions: dict[str, Any],
        payload: NamedTensors,
        party: str,
        global_state: NamedTensors,
        party_state: dict[str, Any],
    ) -> PartyHooks:
        return ScaffoldHooks(payload, global_state, party_state)

    def accumulate(self, update: Update) -> None:
        who = f"party {update.party!r}"
        if update.party not in self.parties:
            raise UpdateRejected(f"{who}: not among the parties scaffold was configured with")
        self._check(update)
        dc = {k[len(DELTA_C) :]: v for k, v in update.extra.items() if k.startswith(DELTA_C)}
        validate_tensors(who, dc, self._global, what="control-variate delta")
        weight = update_weight(update, self.params.weight)
        self._add(update.tensors, weight)
        self._dc_sum = weighted_sum_into(self._dc_sum, dc, 1.0)

    def finalize(self) -> NamedTensors:
        delta = self.mean_delta()
        if self._c is None or self._dc_sum is None:
            raise RuntimeError("finalize() called before any update was accumulated")
        dc_mean, self._dc_sum = sum_as_float32(self._dc_sum, len(self.parties)), None
        self._c = {k: c + dc_mean[k].to(c.device) for k, c in self._c.items()}
        return apply_delta(self._global, delta, scale=self.params.global_lr)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "c": None if self._c is None else clone_state(self._c)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._c = None if state["c"] is None else clone_state(state["c"])
