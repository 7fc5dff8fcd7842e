from __future__ import annotations

import pytest

from mpctf.privacy.config import ClientDpConfig, PrivacyConfig
from mpctf.privacy.secagg import SecAggParams


def test_everything_is_off_by_default():
    config = PrivacyConfig()
    assert config.client_dp is None and config.secure_aggregation is None
    assert config.sample_dp is None and config.homomorphic_encryption is None


def test_client_dp_defaults_live_in_the_schema():
    dp = ClientDpConfig(noise_multiplier=1.0, clip_norm=0.5)
    assert (dp.mode, dp.delta, dp.accountant, dp.epsilon_max) == ("central", 1e-5, "rdp", None)


@pytest.mark.parametrize(
    ("section", "values", "match"),
    [
        ("client_dp", {"noise_multiplier": 1.0, "clip_norm": 0.0}, "clip_norm"),
        ("client_dp", {"noise_multiplier": 1.0, "clip_norm": 1.0, "mode": "local"}, "mode"),
        (
            "sample_dp",
            {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "grad_sample_mode": "ghost"},
            "grad_sample_mode",
        ),
        ("secure_aggregation", {"num_neighbours": 3}, "`num_neighbours` must be even"),
        (
            "secure_aggregation",
            {"num_neighbours": 4, "threshold": 6},
            "`threshold` must be <= num_neighbours \\+ 1 = 5",
        ),
        ("secure_aggregation", {"bits": 63}, "bits"),
        ("audit", {"canary_rows": 1}, "`canary_rows` must be 0 \\(off\\) or at least 2"),
    ],
)
def test_invalid_sections_name_the_key(section, values, match):
    with pytest.raises(ValueError, match=match):
        PrivacyConfig.model_validate({section: values})


def test_threshold_defaults_to_a_majority_of_holders():
    assert SecAggParams().threshold_for(5) == 3
    assert SecAggParams().threshold_for(4) == 3
    assert SecAggParams(threshold=2).threshold_for(9) == 2
