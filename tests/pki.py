"""A private CA and the certificates it signs, as PEM files, for the TLS tests (no tests here).

Made with the ``cryptography`` package at test time, so no key material is stored in the repository.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _alternative_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
                path: Path, *, ca: bool = False, names: Sequence[str] = LOOPBACK_NAMES,
                usages: Sequence[x509.ObjectIdentifier] = ()) -> Path:
    """A certificate of ``subject`` signed by ``issuer``; a leaf carries ``names`` as SANs (IPs or DNS names)."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([_alternative_name(n) for n in names]),
                                        critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    path.write_bytes(builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class Authority:
    """A CA with one server and one client certificate, as PEM files."""

    name: str
    folder: Path
    ca: Path
    ca_key: ec.EllipticCurvePrivateKey
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def issue(self, subject: str, names: Sequence[str] = LOOPBACK_NAMES,
              usages: Sequence[x509.ObjectIdentifier] = ()) -> tuple[Path, Path]:
        """Another certificate this CA signs, for ``names``: (certificate file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        return (certificate(subject, key, self.name, self.ca_key, self.folder / f"{subject}.pem", names=names,
                            usages=usages),
                _write_key(key, self.folder / f"{subject}-key.pem"))


def make_authority(folder: Path, name: str = "test-ca") -> Authority:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    folder.mkdir(parents=True, exist_ok=True)
    return Authority(
        name=name, folder=folder, ca=certificate(name, ca_key, name, ca_key, folder / "ca.pem", ca=True),
        ca_key=ca_key,
        server_cert=certificate("127.0.0.1", server_key, name, ca_key, folder / "server.pem"),
        server_key=_write_key(server_key, folder / "server-key.pem"),
        client_cert=certificate("alice-client", client_key, name, ca_key, folder / "client.pem"),
        client_key=_write_key(client_key, folder / "client-key.pem"))


__all__ = ["Authority", "certificate", "make_authority"]
