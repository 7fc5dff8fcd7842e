from __future__ import annotations

import ipaddress
import os
import stat
from concurrent import futures

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

from mpctf.errors import ConfigError, StorageError
from mpctf.launch.certs import create_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return create_certificates(
        tmp_path_factory.mktemp("certs"), ["127.0.0.1", "localhost", "server.example"], ["alice", "bob"]
    )


def test_server_certificate_verifies_against_the_ca_and_has_the_sans(certs):
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "server.example"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_foreign_ca_does_not_verify(certs, tmp_path):
    other = create_certificates(tmp_path, ["127.0.0.1"], [])
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    with pytest.raises(InvalidSignature):
        server.verify_directly_issued_by(x509.load_pem_x509_certificate(other.ca_cert.read_bytes()))


def test_private_keys_are_0600_and_load(certs):
    for path in [certs.ca_key, certs.server_key, *certs.party_private_keys.values()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    server_key = load_pem_private_key(certs.server_key.read_bytes(), None)
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    assert server_key.public_key() == server.public_key()


def test_party_keys_are_openssh_ecdsa_p384_pairs(certs):
    assert sorted(certs.party_private_keys) == ["alice", "bob"]
    for name, private_path in certs.party_private_keys.items():
        private = load_ssh_private_key(private_path.read_bytes(), None)
        public_text = certs.party_public_keys[name].read_text()
        assert public_text.startswith("ecdsa-sha2-nistp384 ")
        public = load_ssh_public_key(public_text.encode())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key() == public


def test_tls_handshake_with_grpc(certs):
    grpc = pytest.importorskip("grpc")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    credentials = grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        for host in ("127.0.0.1", "localhost"):
            channel = grpc.secure_channel(
                f"{host}:{port}", grpc.ssl_channel_credentials(certs.ca_cert.read_bytes())
            )
            grpc.channel_ready_future(channel).result(timeout=10)
            channel.close()
    finally:
        server.stop(0)


@pytest.mark.parametrize(
    ("hosts", "parties", "days", "match"),
    [
        ([], ["a"], 365, "no server host"),
        (["h"], ["a", "a"], 365, "unique; repeated: a"),
        (["h"], ["../x"], 365, "party name '../x' is not file-name-safe"),
        (["h"], ["x" * 65], 365, "is not file-name-safe"),
        (["h"], ["a"], -5, "valid days must be between 1 and 36500, got -5"),
        (["h"], ["a"], 0, "got 0"),
        (["h"], ["a"], 10**9, "got 1000000000"),
        (["bad host"], ["a"], 365, "server host 'bad host' is neither"),
        ([""], ["a"], 365, "server host '' is neither"),
    ],
)
def test_bad_arguments_are_config_errors_before_anything_is_written(tmp_path, hosts, parties, days, match):
    with pytest.raises(ConfigError, match=match):
        create_certificates(tmp_path / "out", hosts, parties, valid_days=days)
    assert not (tmp_path / "out").exists()


def test_an_existing_ca_is_kept_unless_replace(tmp_path):
    first = create_certificates(tmp_path, ["127.0.0.1"], ["alice"], replace=False)
    before = first.ca_key.read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a CA .*pass --force to replace it"):
        create_certificates(tmp_path, ["127.0.0.1"], ["alice"], replace=False)
    assert first.ca_key.read_bytes() == before
    assert create_certificates(tmp_path, ["127.0.0.1"], ["alice"]).ca_key.read_bytes() != before


def test_an_output_folder_under_a_file_is_a_config_error(tmp_path):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "certs"):
        with pytest.raises(ConfigError, match=f"{tmp_path / 'f'} is a file, not a folder"):
            create_certificates(out, ["127.0.0.1"], ["alice"])


def test_an_unwritable_folder_is_a_storage_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(StorageError, match=f"{tmp_path}: cannot write credentials: Permission denied"):
        create_certificates(tmp_path, ["127.0.0.1"], ["alice"])
