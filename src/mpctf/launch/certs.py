"""TLS certificates and SuperNode authentication keys for a federation, made with ``cryptography``.

Writes, under ``out_dir``:

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority (ECDSA P-384);
- ``server.pem`` / ``server.key``: the server certificate, signed by the CA, with a subject alternative name
  for every host the parties will dial (IP addresses as IP SANs, anything else as DNS names) — the SuperLink's
  ``--ssl-certfile``, ``--ssl-keyfile`` and ``--ssl-ca-certfile``; parties use ``ca.crt`` as root certificate;
- ``parties/<name>`` / ``parties/<name>.pub``: one ECDSA P-384 key pair per party in OpenSSH format, what
  ``ssh-keygen -t ecdsa -b 384`` makes: Flower's ``flwr supernode register <name>.pub`` and the SuperNode's
  ``--auth-supernode-private-key <name>`` read exactly these.

Private keys are written with mode 0600, created that way (never world-readable, not even for an instant).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpctf.errors import ConfigError, StorageError

_PARTY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
#: Longest validity accepted: a hundred years (X.509 dates end in 9999).
MAX_VALID_DAYS = 36500


@dataclass(frozen=True)
class Certificates:
    """Where :func:`create_certificates` put everything."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    party_private_keys: dict[str, Path]
    party_public_keys: dict[str, Path]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _write(path: Path, data: bytes, private: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # O_CREAT's mode does not apply to a file that already existed
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # A CA signs certificates and CRLs; a TLS server with an ECDSA key only makes signatures.
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    valid_days: int,
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer if issuer is not None else name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew between hosts
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_certificates(
    out_dir: str | Path,
    server_hosts: list[str],
    party_names: list[str],
    *,
    valid_days: int = 365,
    replace: bool = True,
) -> Certificates:
    """Create the CA, the server certificate for ``server_hosts`` and one key pair per party.

    ``replace=False`` refuses a folder that already holds a CA: a new CA invalidates every certificate and key
    the old one signed, which parties may already hold. :class:`ConfigError` for bad arguments,
    :class:`StorageError` when the folder cannot be written."""
    _check_arguments(server_hosts, party_names, valid_days)
    out = Path(out_dir)
    _check_out_dir(out, replace)
    try:
        return _create(out, server_hosts, party_names, valid_days)
    except OSError as exc:
        raise StorageError(f"{out}: cannot write credentials: {exc.strerror or exc}") from None


def _check_arguments(server_hosts: list[str], party_names: list[str], valid_days: int) -> None:
    if not server_hosts:
        raise ConfigError("no server host: the server certificate needs at least one host name or IP")
    bad_hosts = [h for h in server_hosts if not _is_host(h)]
    if bad_hosts:
        raise ConfigError(f"server host {bad_hosts[0]!r} is neither an IP address nor a DNS name")
    bad = [n for n in party_names if not _PARTY_NAME.match(n)]
    if bad:
        raise ConfigError(
            f"party name {bad[0]!r} is not file-name-safe: 1 to 64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    repeated = sorted({n for n in party_names if party_names.count(n) > 1})
    if repeated:
        raise ConfigError(f"party names must be unique; repeated: {', '.join(repeated)}")
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise ConfigError(f"valid days must be between 1 and {MAX_VALID_DAYS}, got {valid_days}")


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOST_NAME.match(host)) and all(len(label) <= 63 for label in host.split("."))
    return True


def _check_out_dir(out: Path, replace: bool) -> None:
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"output folder {out}: {blocker} is a file, not a folder")
    existing = [p for p in (out / "ca.key", out / "ca.crt") if p.exists()]
    if existing and not replace:
        raise ConfigError(
            f"{out} already holds a CA ({existing[0].name}); a new one would invalidate every certificate and "
            "key it signed: pass --force to replace it, or choose another folder"
        )


def _create(out: Path, server_hosts: list[str], party_names: list[str], valid_days: int) -> Certificates:
    ca_key = _new_key()
    ca_cert = (
        _certificate("MPCTF federation CA", ca_key.public_key(), None, ca_key, valid_days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = _new_key()
    server_cert = (
        _certificate(server_hosts[0], server_key.public_key(), ca_cert.subject, ca_key, valid_days)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in server_hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    private_keys, public_keys = {}, {}
    for name in party_names:
        key = _new_key()
        private_keys[name] = _write(
            out / "parties" / name,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
            private=True,
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public_keys[name] = _write(
            out / "parties" / f"{name}.pub", public + f" {name}\n".encode(), private=False
        )
    pem = serialization.Encoding.PEM
    return Certificates(
        ca_cert=_write(out / "ca.crt", ca_cert.public_bytes(pem), private=False),
        ca_key=_write(out / "ca.key", _pem_key(ca_key), private=True),
        server_cert=_write(out / "server.pem", server_cert.public_bytes(pem), private=False),
        server_key=_write(out / "server.key", _pem_key(server_key), private=True),
        party_private_keys=private_keys,
        party_public_keys=public_keys,
    )
