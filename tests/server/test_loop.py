"""The round loop against hand-computed values, with scripted parties (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpctf.config import load_config
from mpctf.errors import ConfigError, FederationError
from mpctf.messages import RoundTask, Update, pack
from mpctf.model.bundle import ModelBundle
from mpctf.report.metrics import read_metrics
from mpctf.report.render import render_report
from mpctf.runtime.base import PartyReply
from mpctf.runtime.local import LocalBackend
from mpctf.server.loop import RoundLoop, max_reply_bytes, measure_bandwidth, select_parties
from support import tiny_config_dict


def scripted(party: str, value: float, samples: int, *, corrupt: bool = False):
    """A party that reports ``value`` in every coordinate as its delta, for ``samples`` samples."""

    def handle(payload: bytes) -> bytes:
        task = RoundTask.from_bytes(payload)
        if task.instructions["op"] == "describe":
            return pack(
                {}, {"kind": "describe", "party": party, "num_samples": 40, "token_lengths": [10] * 40}
            )
        fill = float("nan") if corrupt else value
        delta = {k: torch.full_like(v, fill) for k, v in task.state.items()}
        return Update(
            party, task.round, delta, num_samples=samples, num_tokens=samples * 10, metrics={"loss": 1.0}
        ).to_bytes()

    return handle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    return ModelBundle.load(load_config(tiny_config_dict(tmp_path_factory.mktemp("b"))))


def _loop(tmp_path: Path, bundle: ModelBundle, handlers, **overrides) -> RoundLoop:
    cfg = load_config(tiny_config_dict(tmp_path, **overrides))
    return RoundLoop(cfg, LocalBackend(handlers), tmp_path / "run", bundle=bundle)


def test_loop_applies_sample_weighted_fedavg_each_round(tmp_path: Path, bundle: ModelBundle) -> None:
    initial = bundle.mode.get_state(bundle.model)
    loop = _loop(tmp_path, bundle, {"alice": scripted("alice", 1.0, 1), "bob": scripted("bob", 3.0, 3)})
    result = loop.run()
    # Each round moves every coordinate by (1·1 + 3·3) / 4 = 2.5; two rounds → +5.
    final = torch.load(tmp_path / "run/checkpoints/round-0002/server_state.pt")["global_state"]
    for key, value in initial.items():
        assert torch.allclose(final[key], value + 5.0, atol=1e-5)
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    parties = [r for r in records if r["event"] == "party_round"]
    assert len(parties) == 4 and all(r["status"] == "ok" for r in parties)
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in parties)
    last = result.rounds[-1]
    assert last["cumulative_bytes_up"] == sum(r["bytes_up"] for r in parties)


def test_evaluation_scores_every_nth_round_and_always_the_last(tmp_path: Path, bundle: ModelBundle) -> None:
    schedule = {"federation.rounds": 5, "data.eval.every_rounds": 2, "data.eval.before_training": False}
    loop = _loop(tmp_path, bundle, {"alice": scripted("alice", 0.0, 1)}, **schedule)
    result = loop.run()
    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4, 5]
    assert [r["round"] for r in result.rounds if "accuracy" in r] == [2, 4, 5]
    assert all("eval_loss" not in r for r in result.rounds if r["round"] in (1, 3))
    assert result.initial_accuracy is None and result.final_accuracy == result.rounds[-1]["accuracy"]
    report = render_report(tmp_path / "run").read_text()
    assert "| 1 | — | — |" in report and "| 2 | 0." in report


def test_corrupt_update_is_rejected_and_round_goes_on(tmp_path: Path, bundle: ModelBundle) -> None:
    initial = bundle.mode.get_state(bundle.model)
    handlers = {"alice": scripted("alice", 1.0, 1), "bob": scripted("bob", 3.0, 3, corrupt=True)}
    _loop(tmp_path, bundle, handlers, **{"federation.rounds": 1}).run()
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    bob = next(r for r in records if r["event"] == "party_round" and r["party"] == "bob")
    assert bob["status"] == "rejected" and "NaN" in bob["reason"]
    final = torch.load(tmp_path / "run/checkpoints/round-0001/server_state.pt")["global_state"]
    key = next(iter(initial))
    assert torch.allclose(final[key], initial[key] + 1.0, atol=1e-5)


def test_oversized_reply_is_rejected_on_any_backend(tmp_path: Path, bundle: ModelBundle) -> None:
    """The size limit holds where the transport cannot refuse unread (local, Flower): 16 bytes per value + 16 MiB."""
    values = sum(t.numel() for t in bundle.mode.get_state(bundle.model).values())
    limit = 16 * values + 16 * 2**20

    def oversized(payload: bytes) -> bytes:
        if RoundTask.from_bytes(payload).instructions["op"] == "describe":
            return scripted("bob", 0, 1)(payload)
        return bytes(limit + 1)

    handlers = {"alice": scripted("alice", 1.0, 1), "bob": oversized}
    _loop(tmp_path, bundle, handlers, **{"federation.rounds": 1}).run()
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    bob = next(r for r in records if r["event"] == "party_round" and r["party"] == "bob")
    assert bob["status"] == "rejected"
    assert bob["reason"] == f"reply of {limit + 1} bytes is larger than the limit of {limit}"


def test_encrypted_replies_may_be_as_large_as_their_ciphertexts(tmp_path: Path) -> None:
    plain = load_config(tiny_config_dict(tmp_path))
    he = load_config(tiny_config_dict(tmp_path, privacy={"homomorphic_encryption": {}}))
    state = {"w": torch.zeros(1000)}
    assert max_reply_bytes(plain, state) == 16 * 1000 + 16 * 2**20
    # degree 8192, 4 primes: 2 polynomials x 8192 coefficients x 4 primes x 8 bytes per 4096 values
    assert max_reply_bytes(he, state) == 128 * 1000 + 16 * 2**20


def test_scale_folding_strategy_needs_a_server_adapter_of_scale_one(
    tmp_path: Path, bundle: ModelBundle
) -> None:
    with pytest.raises(
        ConfigError, match=r"hetlora .* training\.lora\.alpha = training\.lora\.r \(4\), not 16"
    ):
        _loop(
            tmp_path,
            bundle,
            {},
            **{"federation.strategy": {"name": "hetlora"}, "training.lora.r": 4, "training.lora.alpha": 16},
        )


def test_bandwidth_is_measured_by_the_server_not_taken_from_the_party() -> None:
    update = Update(
        "bob", 1, {}, num_samples=1, num_tokens=1, metrics={"party_seconds": 1.5, "bandwidth_bps": 1e12}
    )
    measure_bandwidth(update, PartyReply("bob", bytes(3000), seconds=2.0, sent_bytes=1000))
    assert update.metrics["bandwidth_bps"] == 8 * 4000 / 0.5
    spoofed = Update("bob", 1, {}, num_samples=1, num_tokens=1, metrics={"bandwidth_bps": 1e12})
    measure_bandwidth(spoofed, PartyReply("bob", bytes(3000), seconds=2.0, sent_bytes=1000))
    assert "bandwidth_bps" not in spoofed.metrics


def test_crashing_party_is_recorded_and_min_parties_enforced(tmp_path: Path, bundle: ModelBundle) -> None:
    def crash(payload: bytes) -> bytes:
        if RoundTask.from_bytes(payload).instructions["op"] == "describe":
            return scripted("bob", 0, 1)(payload)
        raise RuntimeError("disk on fire")

    handlers = {"alice": scripted("alice", 1.0, 1), "bob": crash}
    loop = _loop(tmp_path, bundle, handlers, **{"federation.rounds": 1, "federation.min_parties": 2})
    with pytest.raises(FederationError, match="1 of 2 updates accepted"):
        loop.run()
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    bob = next(r for r in records if r["event"] == "party_round" and r["party"] == "bob")
    assert bob["status"] == "failed" and "disk on fire" in bob["reason"]


def test_select_parties_is_seeded_and_sized() -> None:
    names = [f"p{i}" for i in range(10)]
    a = select_parties(names, 3, seed=1, round_num=2)
    assert a == select_parties(names, 3, seed=1, round_num=2) and len(a) == 3
    assert select_parties(names, None, seed=1, round_num=2) == names


@pytest.mark.parametrize(("downlink", "encodings"), [("fp16", 1), ("topk", 2)])
def test_a_state_shared_by_the_parties_is_encoded_once_unless_the_codec_keeps_party_state(
    tmp_path: Path, bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch, downlink: str, encodings: int
) -> None:
    from mpctf.comm.chain import CodecChain

    calls: list[int] = []
    encode = CodecChain.encode
    monkeypatch.setattr(CodecChain, "encode", lambda self, t, s: (calls.append(1), encode(self, t, s))[1])
    received: dict[str, int] = {}

    def sized(party: str):
        handle = scripted(party, 0.0, 1)

        def record(payload: bytes) -> bytes:
            task = RoundTask.from_bytes(payload)
            if task.instructions["op"] != "train":
                return handle(payload)
            received[party] = len(payload)
            state = CodecChain([(downlink, None)]).decode(task.state, task.instructions["downlink"])
            return Update(
                party, task.round, {k: torch.zeros_like(v) for k, v in state.items()}, 1, 1
            ).to_bytes()

        return record

    overrides = {"federation.rounds": 1, "communication": {"downlink": [{"name": downlink}]}}
    _loop(tmp_path, bundle, {"alice": sized("alice"), "bob": sized("bob")}, **overrides).run()
    assert len(calls) == encodings  # the scripted replies are not encoded, so every call is the downlink's
    records = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if r["event"] == "party_round"]
    assert {r["party"]: r["bytes_down"] for r in records} == received
