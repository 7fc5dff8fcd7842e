import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mpctf.comm import build_codec
from mpctf.comm.topk import TopKCodec, TopKParams, index_dtype, top_k_count

BOUNDED = settings(max_examples=30, deadline=None)


def _round(codec: TopKCodec, x: torch.Tensor, state: dict) -> torch.Tensor:
    """One round: encode ``x`` with the running state and return what the server decodes."""
    encoded, header = codec.encode({"x": x}, state)
    return codec.decode(encoded, header)["x"]


def test_registered_as_topk_with_default_fraction() -> None:
    codec = build_codec("topk")
    assert isinstance(codec, TopKCodec)
    assert codec.params.fraction == 0.01


@pytest.mark.parametrize(
    ("numel", "fraction", "k"), [(100, 0.01, 1), (3, 0.01, 1), (10, 1.0, 10), (1000, 0.015, 15), (0, 0.5, 0)]
)
def test_top_k_count(numel: int, fraction: float, k: int) -> None:
    assert top_k_count(numel, fraction) == k


def test_index_dtype_widens_past_int32() -> None:
    assert index_dtype(10) == torch.int32
    assert index_dtype(2**31 - 1) == torch.int32
    assert index_dtype(2**31) == torch.int64


def test_hand_computed_two_rounds_with_error_feedback() -> None:
    codec = build_codec("topk", {"fraction": 0.4})  # k = 2 of 5
    state: dict = {}
    encoded, header = codec.encode({"x": torch.tensor([0.1, -3.0, 2.0, 0.5, -0.2])}, state)
    assert encoded["x::idx"].dtype == torch.int32
    assert encoded["x::idx"].tolist() == [1, 2]
    assert encoded["x::val"].tolist() == [-3.0, 2.0]
    assert header == {"tensors": {"x": {"shape": [5], "dtype": "float32"}}}
    assert codec.decode(encoded, header)["x"].tolist() == [0.0, -3.0, 2.0, 0.0, 0.0]
    assert torch.allclose(state["x"], torch.tensor([0.1, 0.0, 0.0, 0.5, -0.2]))
    # Round 2: the residual is added first, so 0.1 + 0.1 and 0.5 + 0 now beat the fresh 0.3 − 0.2.
    sent = _round(codec, torch.tensor([0.1, 0.0, 0.0, 0.0, 0.3]), state)
    assert torch.allclose(sent, torch.tensor([0.2, 0.0, 0.0, 0.5, 0.0]))
    assert torch.allclose(state["x"], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1]))


@BOUNDED
@given(data=st.data(), fraction=st.sampled_from([0.01, 0.1, 0.5, 1.0]))
def test_sent_entries_are_the_largest_and_indices_ascend(
    data: st.DataObject, fraction: float, wide_float_tensors: st.SearchStrategy[torch.Tensor]
) -> None:
    x = data.draw(wide_float_tensors)
    codec = build_codec("topk", {"fraction": fraction})
    encoded, _ = codec.encode({"x": x}, {})
    indices = encoded["x::idx"].long()
    assert indices.numel() == top_k_count(x.numel(), fraction)
    assert bool((indices[1:] > indices[:-1]).all())
    unsent = torch.ones(x.numel(), dtype=torch.bool)
    unsent[indices] = False
    if indices.numel() and bool(unsent.any()):
        assert float(x.reshape(-1)[indices].abs().min()) >= float(x.reshape(-1)[unsent].abs().max())


@BOUNDED
@given(data=st.data(), fraction=st.sampled_from([0.01, 0.2, 1.0]))
def test_each_round_sent_plus_residual_is_update_plus_previous_residual_exactly(
    data: st.DataObject, fraction: float, float_tensors: st.SearchStrategy[torch.Tensor]
) -> None:
    """m_t + e_t == x_t + e_{t−1} bit for bit, in the float32 (float64) working precision, for every dtype."""
    first = data.draw(float_tensors)
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    codec = build_codec("topk", {"fraction": fraction})
    state: dict = {}
    previous = torch.zeros(first.shape, dtype=torch.promote_types(first.dtype, torch.float32))
    for x in (first, *(torch.randn(first.shape, generator=generator).to(first.dtype) for _ in range(2))):
        sent = _round(codec, x, state)
        assert sent.dtype == x.dtype and sent.shape == x.shape
        assert torch.equal(sent.to(previous.dtype) + state["x"], x.to(previous.dtype) + previous)
        previous = state["x"].clone()


@BOUNDED
@given(seed=st.integers(0, 2**31 - 1), rounds=st.integers(1, 8), fraction=st.sampled_from([0.01, 0.1, 0.3]))
def test_cumulative_sent_plus_residual_equals_cumulative_update_exactly(
    seed: int, rounds: int, fraction: float
) -> None:
    """Σ m_t + e_T == Σ x_t. Integer-valued updates keep every float32 sum exact, so equality is bitwise."""
    generator = torch.Generator().manual_seed(seed)
    codec = build_codec("topk", {"fraction": fraction})
    state: dict = {}
    total_true = torch.zeros(7, 11)
    total_sent = torch.zeros(7, 11)
    for _ in range(rounds):
        x = torch.randint(-1000, 1001, (7, 11), generator=generator).float()
        total_true += x
        total_sent += _round(codec, x, state)
    assert torch.equal(total_sent + state["x"], total_true)


def test_cumulative_sent_update_converges_to_the_cumulative_true_update() -> None:
    """With a persistent direction plus noise, ‖Σ m_t − Σ x_t‖ / ‖Σ x_t‖ = ‖e_T‖ / ‖Σ x_t‖ shrinks with T."""
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(2000, generator=generator)
    codec = build_codec("topk", {"fraction": 0.01})
    state: dict = {}
    total_true, total_sent = torch.zeros(2000), torch.zeros(2000)
    errors = {}
    for t in range(1, 401):
        x = direction + 0.5 * torch.randn(2000, generator=generator)
        total_true += x
        total_sent += _round(codec, x, state)
        errors[t] = float((total_sent - total_true).norm() / total_true.norm())
    assert errors[400] < errors[100] < errors[25]
    assert errors[400] < 0.15


def test_16_bit_values_travel_in_their_dtype_and_their_rounding_goes_into_the_residual() -> None:
    codec = build_codec("topk", {"fraction": 0.5})
    state: dict = {}
    x = torch.tensor([1.0 + 2.0**-12, 0.25, -3.0 - 2.0**-11, 0.0]).to(torch.float32)
    encoded, header = codec.encode({"x": x.to(torch.float16)}, state)
    assert encoded["x::val"].dtype == torch.float16
    assert state["x"].dtype == torch.float32
    sent = codec.decode(encoded, header)["x"]
    assert torch.equal(sent.float() + state["x"], x.to(torch.float16).float())


def test_residual_of_another_shape_is_refused() -> None:
    codec = build_codec("topk")
    state = {"x": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"residual of 'x' has shape \(3,\), the tensor has \(4,\)"):
        codec.encode({"x": torch.ones(4)}, state)


def test_non_finite_update_is_refused_and_leaves_the_state_alone() -> None:
    codec = build_codec("topk", {"fraction": 0.5})
    state: dict = {}
    codec.encode({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0])}, state)
    before = {k: v.clone() for k, v in state.items()}
    with pytest.raises(ValueError, match=r"'b' .* contains NaN or Inf"):
        codec.encode({"a": torch.tensor([5.0, 6.0]), "b": torch.tensor([float("nan"), 1.0])}, state)
    assert all(torch.equal(state[k], before[k]) for k in before)


@pytest.mark.parametrize("bad_index", [-1, 5])
def test_out_of_range_indices_are_refused(bad_index: int) -> None:
    codec = build_codec("topk", {"fraction": 0.4})
    encoded, header = codec.encode({"x": torch.arange(5.0)}, {})
    encoded["x::idx"][0] = bad_index
    with pytest.raises(ValueError, match="outside a tensor of 5 entries"):
        codec.decode(encoded, header)


def test_values_and_indices_must_pair_up() -> None:
    codec = build_codec("topk", {"fraction": 0.4})
    encoded, header = codec.encode({"x": torch.arange(5.0)}, {})
    encoded["x::val"] = encoded["x::val"][:1]
    with pytest.raises(ValueError, match="top-k values has 1 elements, expected 2"):
        codec.decode(encoded, header)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_must_be_in_zero_one(fraction: float) -> None:
    with pytest.raises(ValidationError, match=r"`fraction` must be in \(0, 1\]"):
        TopKParams(fraction=fraction)
