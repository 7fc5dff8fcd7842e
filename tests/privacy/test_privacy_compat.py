from __future__ import annotations

import pytest

from mpctf.aggregation import STRATEGIES
from mpctf.comm import CODECS
from mpctf.model.modes import MODES
from mpctf.privacy.compat import incompatibilities, mechanisms
from mpctf.privacy.config import PrivacyConfig

DP = {"noise_multiplier": 1.0, "clip_norm": 0.1}
DISTRIBUTED = {**DP, "mode": "distributed"}


def problems(strategy: str, codecs: list[str], privacy, mode: str | None = None) -> list[str]:
    return incompatibilities(
        STRATEGIES.get(strategy), [CODECS.get(c) for c in codecs], privacy, MODES.get(mode) if mode else None
    )


def test_clean_combinations_have_no_problems():
    assert problems("fedavg", ["zstd"], {}) == []
    assert problems("fedadam", ["int8"], {"secure_aggregation": {}}) == []
    assert problems("fedavgm", ["int4"], {"secure_aggregation": {}}) == []
    assert problems("fedavg", [], {"client_dp": DISTRIBUTED, "secure_aggregation": {}}) == []
    assert (
        problems("fedavg", [], {"client_dp": DP, "sample_dp": {"noise_multiplier": 1, "max_grad_norm": 1}})
        == []
    )
    # the server reads the decrypted mean, so any strategy that only needs the mean works with CKKS
    assert problems("fedadam", [], {"homomorphic_encryption": {}}) == []
    assert problems("fedprox", [], {"homomorphic_encryption": {}}) == []


@pytest.mark.parametrize(
    ("strategy", "codecs", "privacy", "fragment"),
    [
        ("krum", [], {"secure_aggregation": {}}, "needs every individual update"),
        ("median", [], {"homomorphic_encryption": {}}, "needs every individual update"),
        ("scaffold", [], {"homomorphic_encryption": {}}, "aggregates one mean update per round"),
        ("dynamic", [], {"client_dp": DP}, "aggregates one mean update per round"),
        ("fedavg", ["topk"], {"homomorphic_encryption": {}}, "keeps different coordinates"),
        ("fedavg", ["topk"], {"secure_aggregation": {}}, "keeps different coordinates"),
        ("fedavg", ["zstd"], {"secure_aggregation": {}}, "one integer quantiser"),
        ("fedavg", ["int8", "zstd"], {"secure_aggregation": {}}, "remove the uplink codecs"),
        ("fedavg", ["int8"], {"homomorphic_encryption": {}}, "remove the uplink codecs."),
        ("fedavg", ["int8"], {"client_dp": DISTRIBUTED, "secure_aggregation": {}}, "noised share to 8 bits"),
        ("fedavg", [], {"secure_aggregation": {}, "homomorphic_encryption": {}}, "enable only one"),
        ("fedavg", [], {"client_dp": DP, "secure_aggregation": {}}, "set client_dp.mode to 'distributed'"),
        ("fedavg", [], {"client_dp": DISTRIBUTED}, "only 1/√n of the noise"),
        (
            "fedavg",
            [],
            {"client_dp": {**DISTRIBUTED, "adaptive_clipping": {}}, "homomorphic_encryption": {}},
            "adaptive clipping rides its count",
        ),
    ],
)
def test_each_incompatibility_is_one_sentence(strategy, codecs, privacy, fragment):
    found = problems(strategy, codecs, privacy)
    matching = [p for p in found if fragment in p]
    assert len(matching) == 1, found
    assert matching[0].endswith(".")


def test_sample_dp_needs_a_mode_with_per_example_gradients():
    sample_dp = {"sample_dp": {"noise_multiplier": 1, "max_grad_norm": 1}}
    assert problems("fedavg", [], sample_dp, "lora") == []
    assert "per-example gradients" in problems("fedavg", [], sample_dp, "full")[0]


def test_rules_read_declared_properties_not_names():
    """Every registered strategy and codec is judged by what it declares: a new one needs no table entry."""
    for name in STRATEGIES:
        cls = STRATEGIES.get(name)
        found = problems(name, [], {"secure_aggregation": {}})
        assert (found == []) == (cls.aggregates_by_mean and not cls.buffers_updates), name
    for name in CODECS:
        cls = CODECS.get(name)
        found = problems("fedavg", [name], {"secure_aggregation": {}})
        assert (found == []) == (cls.integer_bits is not None and not cls.sparsifies), name
    assert set(mechanisms()) == set(PrivacyConfig.model_fields)


def test_accepts_a_validated_config_and_rejects_unknown_keys():
    config = PrivacyConfig.model_validate({"secure_aggregation": {"threshold": 3}})
    assert problems("krum", [], config)
    with pytest.raises(ValueError, match="extra"):
        problems("fedavg", [], {"secure_agg": {}})


def test_the_audit_needs_a_ledger_to_check() -> None:
    dpsgd = {"noise_multiplier": 1, "max_grad_norm": 1}
    assert "enable privacy.client_dp, or privacy.sample_dp" in problems("fedavg", [], {"audit": {}})[0]
    assert (
        "enable privacy.sample_dp"
        in problems("fedavg", [], {"client_dp": DP, "audit": {"canary_rows": 8}})[0]
    )
    assert problems("fedavg", [], {"sample_dp": dpsgd, "audit": {"canary_rows": 8}}) == []
    assert problems("fedavg", [], {"client_dp": DP, "audit": {}}) == []
    # DP-SGD's rows are audited by canary rows; without them the audit's canary updates need client DP.
    assert "enable privacy.client_dp" in problems("fedavg", [], {"sample_dp": dpsgd, "audit": {}})[0]
