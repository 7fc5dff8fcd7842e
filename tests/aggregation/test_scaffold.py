import pytest
import torch

from mpctf.aggregation import PartySpec
from mpctf.aggregation.scaffold import DELTA_C, Scaffold, ScaffoldParams, option_ii_control
from mpctf.errors import UpdateRejected


def _server(global_lr: float = 1.0) -> Scaffold:
    s = Scaffold(ScaffoldParams(global_lr=global_lr))
    s.configure_parties({"a": PartySpec(), "b": PartySpec(), "c": PartySpec()})  # N = 3
    s.load_state_dict({"strategy": "scaffold", "c": {"w": torch.tensor([0.1, -0.2])}})
    return s


def test_one_server_round_by_hand(upd) -> None:
    s = _server()
    s.begin_round(1, {"w": torch.tensor([1.0, 2.0])})
    assert torch.equal(s.round_payload()["w"], torch.tensor([0.1, -0.2]))
    s.accumulate(upd("a", samples=1, w=[-0.5, 0.5], extra={DELTA_C + "w": [0.9, -0.8]}))
    s.accumulate(upd("b", samples=7, w=[0.1, 0.3], extra={DELTA_C + "w": [0.3, 0.6]}))
    # uniform mean Δy = [-0.2, 0.4] → x = [0.8, 2.4]; c = c + (Δc_a + Δc_b) / N = [0.1 + 1.2/3, -0.2 - 0.2/3]
    assert torch.allclose(s.finalize()["w"], torch.tensor([0.8, 2.4]))
    assert torch.allclose(s.state_dict()["c"]["w"], torch.tensor([0.5, -0.2 - 0.2 / 3]))


def test_global_learning_rate_scales_the_step(upd) -> None:
    s = _server(global_lr=2.0)
    s.begin_round(1, {"w": torch.tensor([1.0, 2.0])})
    s.accumulate(upd("a", w=[-0.5, 0.5], extra={DELTA_C + "w": [0.0, 0.0]}))
    s.accumulate(upd("b", w=[0.1, 0.3], extra={DELTA_C + "w": [0.0, 0.0]}))
    assert torch.allclose(s.finalize()["w"], torch.tensor([0.6, 2.8]))


def test_party_corrects_each_step_and_computes_option_ii_control_variate() -> None:
    party_state: dict = {}
    x = {"w": torch.tensor([1.0, 2.0])}
    c = {"w": torch.tensor([0.1, -0.2])}
    hooks = Scaffold.party_hooks({}, c, "a", x, party_state)
    p = torch.nn.Parameter(x["w"].clone())
    with torch.no_grad():
        hooks.after_step({"w": p}, 0.5)
    assert torch.allclose(p.detach(), torch.tensor([0.95, 2.1]))  # y − η (c − c_i) with c_i = 0
    # (x − y) / (K η) = [0.5, −0.5] / (5 · 0.1) = [1, −1];  c_i⁺ = 0 − c + [1, −1] = [0.9, −0.8]
    extra = hooks.after_training({"w": torch.tensor([0.5, 2.5])}, x, 5, 0.1)
    assert torch.allclose(extra[DELTA_C + "w"], torch.tensor([0.9, -0.8]))
    assert torch.allclose(party_state["scaffold_c"]["w"], torch.tensor([0.9, -0.8]))
    # Next round the party's c_i persists: correction c − c_i = [0.1 − 0.9, −0.2 + 0.8] = [−0.8, 0.6]
    hooks = Scaffold.party_hooks({}, c, "a", x, party_state)
    p = torch.nn.Parameter(torch.zeros(2))
    with torch.no_grad():
        hooks.after_step({"w": p}, 1.0)
    assert torch.allclose(p.detach(), torch.tensor([0.8, -0.6]))


def test_local_sgd_follows_the_papers_corrected_rule() -> None:
    # Two SGD steps on ½‖y − t‖² from x: y ← y − η (y − t − c_i + c), with c_i = 0, c = [1, 0].
    hooks = Scaffold.party_hooks({}, {"w": torch.tensor([1.0, 0.0])}, "a", {"w": torch.zeros(2)}, {})
    y = torch.nn.Parameter(torch.zeros(2))
    target = torch.tensor([2.0, 2.0])
    optimizer = torch.optim.SGD([y], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        (0.5 * (y - target).pow(2).sum()).backward()
        optimizer.step()
        with torch.no_grad():
            hooks.after_step({"w": y}, 0.5)
    # step 1: g = [-2, -2] + [1, 0] → y = [0.5, 1.0]; step 2: g = [-1.5, -1] + [1, 0] → y = [0.75, 1.5]
    assert torch.allclose(y.detach(), torch.tensor([0.75, 1.5]))


def test_with_adamw_the_control_variate_is_the_mean_uncorrected_step_direction() -> None:
    # AdamW's first step moves every entry by lr · sign(g) whatever the gradient's size (here 1e-3), so
    # c_i⁺ = (x − y) / (K η) less the correction's share, sign(g) = [1, −1]: the same units as c.
    c = {"w": torch.tensor([0.5, -0.5])}
    party_state: dict = {}
    hooks = Scaffold.party_hooks({}, c, "a", {"w": torch.zeros(2)}, party_state)
    y = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([y], lr=0.01, weight_decay=0.0)
    y.grad = torch.tensor([1e-3, -1e-3])
    optimizer.step()
    with torch.no_grad():
        hooks.after_step({"w": y}, 0.01)
    assert torch.allclose(y.detach(), torch.tensor([-0.015, 0.015]), atol=1e-6)
    hooks.after_training({"w": y.detach()}, {"w": torch.zeros(2)}, 1, 0.01)
    assert torch.allclose(party_state["scaffold_c"]["w"], torch.tensor([1.0, -1.0]), atol=1e-4)


def test_option_ii_formula() -> None:
    out = option_ii_control(
        c_party={"w": torch.tensor([1.0])},
        c_server={"w": torch.tensor([0.5])},
        global_state={"w": torch.tensor([3.0])},
        local={"w": torch.tensor([1.0])},
        steps=4,
        lr=0.5,
    )
    assert torch.allclose(out["w"], torch.tensor([1.0 - 0.5 + 2.0 / 2.0]))


def test_no_step_leaves_party_variate(upd) -> None:
    state = {"scaffold_c": {"w": torch.tensor([3.0])}}
    hooks = Scaffold.party_hooks({}, {"w": torch.zeros(1)}, "a", {"w": torch.zeros(1)}, state)
    assert torch.equal(
        hooks.after_training({"w": torch.ones(1)}, {"w": torch.zeros(1)}, 0, 0.1)["delta_c/w"], torch.zeros(1)
    )
    assert torch.equal(state["scaffold_c"]["w"], torch.tensor([3.0]))


def test_rejects_missing_or_bad_control_delta_and_unknown_party(upd) -> None:
    s = _server()
    s.begin_round(1, {"w": torch.zeros(2)})
    with pytest.raises(UpdateRejected, match="control-variate delta lacks"):
        s.accumulate(upd("a", w=[0.0, 0.0]))
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        s.accumulate(upd("a", w=[0.0, 0.0], extra={DELTA_C + "w": [float("inf"), 0.0]}))
    with pytest.raises(UpdateRejected, match="not among the parties"):
        s.accumulate(upd("z", w=[0.0, 0.0], extra={DELTA_C + "w": [0.0, 0.0]}))


def test_needs_the_party_count() -> None:
    with pytest.raises(ValueError, match="configure_parties"):
        Scaffold().begin_round(1, {"w": torch.zeros(1)})
