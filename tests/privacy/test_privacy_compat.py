from __future__ import annotations

import pytest

from mpctf.privacy.compat import incompatibilities
from mpctf.privacy.config import PrivacyConfig

DP = {"noise_multiplier": 1.0, "clip_norm": 0.1}


def test_clean_combinations_have_no_problems():
    assert incompatibilities("fedavg", False, ["zstd"], {}) == []
    assert incompatibilities("fedadam", False, ["int8"], {"secure_aggregation": {}}) == []
    assert (
        incompatibilities(
            "fedavg", False, [], {"client_dp": {**DP, "mode": "distributed"}, "secure_aggregation": {}}
        )
        == []
    )
    assert (
        incompatibilities(
            "fedavg", False, [], {"client_dp": DP, "sample_dp": {"noise_multiplier": 1, "max_grad_norm": 1}}
        )
        == []
    )
    assert incompatibilities("fedprox", False, [], {"homomorphic_encryption": {}}) == []


@pytest.mark.parametrize(
    ("strategy", "buffers", "codecs", "privacy", "fragment"),
    [
        ("krum", True, [], {"secure_aggregation": {}}, "needs every individual update"),
        ("fedmedian", False, [], {"homomorphic_encryption": {}}, "needs every individual update"),
        ("fedadam", False, [], {"homomorphic_encryption": {}}, "cannot post-process it"),
        ("fedavg", False, ["topk"], {"homomorphic_encryption": {}}, "keeps different coordinates"),
        ("fedavg", False, ["top_k"], {"secure_aggregation": {}}, "keeps different coordinates"),
        ("fedavg", False, [], {"secure_aggregation": {}, "homomorphic_encryption": {}}, "enable only one"),
        (
            "fedavg",
            False,
            [],
            {"client_dp": DP, "secure_aggregation": {}},
            "set client_dp.mode to 'distributed'",
        ),
        ("fedavg", False, [], {"client_dp": {**DP, "mode": "distributed"}}, "only 1/√n of the noise"),
        ("trimmed_mean", True, [], {"client_dp": DP}, "does not aggregate by a sum"),
        (
            "fedavg",
            False,
            [],
            {
                "client_dp": {**DP, "mode": "distributed", "adaptive_clipping": {}},
                "homomorphic_encryption": {},
            },
            "adaptive clipping needs the server",
        ),
    ],
)
def test_each_incompatibility_is_one_sentence(strategy, buffers, codecs, privacy, fragment):
    problems = incompatibilities(strategy, buffers, codecs, privacy)
    matching = [p for p in problems if fragment in p]
    assert len(matching) == 1, problems
    assert matching[0].endswith(".")


def test_accepts_a_validated_config_and_rejects_unknown_keys():
    config = PrivacyConfig.model_validate({"secure_aggregation": {"threshold": 3}})
    assert incompatibilities("krum", True, [], config)
    with pytest.raises(ValueError, match="extra"):
        incompatibilities("fedavg", False, [], {"secure_agg": {}})
