"""The simulation-only poisoning hook: what a malicious party sends, and that the config reaches it."""

from __future__ import annotations

import pytest
import torch

from mpctf.config import load_config
from mpctf.errors import ConfigError
from mpctf.party.attack import poison_update
from support import tiny_config_dict


def test_sign_flip_reverses_and_amplifies() -> None:
    delta = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5]])}
    out = poison_update(delta, kind="sign_flip", factor=3.0)
    assert torch.equal(out["a"], torch.tensor([-3.0, 6.0]))
    assert torch.equal(out["b"], torch.tensor([[-1.5]]))
    assert torch.equal(delta["a"], torch.tensor([1.0, -2.0]))  # the input is untouched


def test_scale_amplifies() -> None:
    out = poison_update({"a": torch.tensor([1.0, -2.0])}, kind="scale", factor=10.0)
    assert torch.equal(out["a"], torch.tensor([10.0, -20.0]))


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown attack kind 'noise'"):
        poison_update({"a": torch.zeros(1)}, kind="noise", factor=1.0)


def test_config_accepts_attack_and_rejects_bad_values(tmp_path) -> None:
    cfg = tiny_config_dict(tmp_path)
    cfg["parties"][1]["attack"] = {"kind": "scale", "factor": 5}
    assert load_config(cfg).party("bob").attack.factor == 5.0
    cfg["parties"][1]["attack"] = {"kind": "scale", "factor": 0}
    with pytest.raises(ConfigError, match="parties"):
        load_config(cfg)


@pytest.mark.slow
def test_attacking_party_sends_the_scaled_update(tmp_path) -> None:
    """The same party, data and seed: with ``scale ×3`` the server receives an update 3× as long."""
    import mpctf
    from mpctf.report.metrics import read_metrics

    def bob_norm(attack: dict | None, name: str) -> float:
        cfg = tiny_config_dict(tmp_path, **{"federation.rounds": 1})
        if attack:
            cfg["parties"][1]["attack"] = attack
        mpctf.run(cfg, run_dir=tmp_path / name)
        records = read_metrics(tmp_path / name / "metrics.jsonl")
        return next(r["update_norm"] for r in records if r["event"] == "party_round" and r["party"] == "bob")

    honest = bob_norm(None, "honest")
    assert bob_norm({"kind": "scale", "factor": 3.0}, "scaled") == pytest.approx(3 * honest, rel=1e-4)
