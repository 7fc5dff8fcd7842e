from __future__ import annotations

import ipaddress
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
    ("hosts", "parties", "match"),
    [([], ["a"], "server_hosts"), (["h"], ["a", "a"], "unique"), (["h"], ["../x"], "file-name-safe")],
)
def test_bad_arguments(tmp_path, hosts, parties, match):
    with pytest.raises(ValueError, match=match):
        create_certificates(tmp_path, hosts, parties)
