from __future__ import annotations

import pytest
import tenseal as ts
import torch

from mpctf.privacy.he import (
    CkksParams,
    CkksParty,
    EncryptedUpdate,
    aggregate_encrypted,
    create_secret_context,
    measure_overhead,
    public_context,
)

PARAMS = CkksParams()


@pytest.fixture(scope="module")
def contexts():
    secret = create_secret_context(PARAMS)
    return secret, public_context(secret)


def updates(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    # 5000 values span two ciphertext chunks of 4096 slots
    return [
        {
            "lora_A": torch.randn(50, 60, generator=generator) * 0.01,
            "lora_B": torch.randn(2000, generator=generator),
        }
        for _ in range(n)
    ]


def test_server_context_holds_no_secret_key(contexts):
    secret, public = contexts
    assert ts.context_from(secret).has_secret_key()
    server = ts.context_from(public)
    assert not server.has_secret_key() and server.is_public()
    ciphertext = CkksParty(secret, PARAMS).encrypt({"w": torch.ones(4)}).chunks[0]
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        ts.ckks_vector_from(server, ciphertext).decrypt()
    with pytest.raises(ValueError, match="holds no secret key"):
        CkksParty(public, PARAMS)


def test_decrypted_aggregate_equals_plain_sum(contexts):
    secret, public = contexts
    party = CkksParty(secret, PARAMS)
    plain = updates(3)
    encrypted = [party.encrypt(u) for u in plain]
    assert len(encrypted[0].chunks) == 2
    wire = [EncryptedUpdate.from_bytes(e.to_bytes()) for e in encrypted]
    result = party.decrypt(aggregate_encrypted(public, wire))
    for key in plain[0]:
        expected = sum(u[key] for u in plain)
        assert result[key].shape == expected.shape
        assert torch.allclose(result[key], expected, atol=1e-5, rtol=0)


def test_weighted_mean_with_plaintext_weights(contexts):
    secret, public = contexts
    party = CkksParty(secret, PARAMS)
    plain = updates(3, seed=1)
    counts = [10.0, 30.0, 60.0]
    weights = [c / sum(counts) for c in counts]
    result = party.decrypt(aggregate_encrypted(public, [party.encrypt(u) for u in plain], weights))
    for key in plain[0]:
        expected = sum(w * u[key] for w, u in zip(weights, plain, strict=True))
        assert torch.allclose(result[key], expected, atol=1e-5, rtol=0)


def test_mismatched_inputs_are_refused(contexts):
    secret, public = contexts
    party = CkksParty(secret, PARAMS)
    a, b = party.encrypt({"w": torch.ones(3)}), party.encrypt({"v": torch.ones(3)})
    with pytest.raises(ValueError, match="different layouts"):
        aggregate_encrypted(public, [a, b])
    with pytest.raises(ValueError, match="2 weights for 1 updates"):
        aggregate_encrypted(public, [a], [0.5, 0.5])


def test_overhead_report():
    report = measure_overhead(5000, 2, PARAMS)
    assert report.plain_bytes_per_party == 20_000
    assert report.encrypted_bytes_per_party > 10 * report.plain_bytes_per_party
    assert report.size_ratio == report.encrypted_bytes_per_party / 20_000
    assert report.max_abs_error < 1e-5
    assert min(report.encrypt_s_per_party, report.aggregate_s, report.decrypt_s) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"poly_modulus_degree": 2048}, "must be one of"),
        ({"coeff_mod_bit_sizes": (60, 60, 60, 60)}, "above 218"),
        ({"coeff_mod_bit_sizes": (60, 60)}, "at least 3 primes"),
    ],
)
def test_params_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CkksParams(**kwargs)
