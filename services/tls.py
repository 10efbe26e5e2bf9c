"""TLS for the public edges (the gateway's REST and the gRPC Certifier) from certificate files, and the client side.

An operator who exposes the gateway beyond loopback sets ``GLS_TLS_CERT_FILE`` and
``GLS_TLS_KEY_FILE`` (PEM); with ``GLS_TLS_CLIENT_CA_FILE`` as well, both listeners also require a
client certificate signed by that CA (mutual TLS). Clients trust a private CA with
``GLS_CA_FILE`` and present their own certificate with ``GLS_CLIENT_CERT_FILE`` / ``GLS_CLIENT_KEY_FILE``.
The files are read once at start-up, so a bad path stops the process with a message naming the
setting, not the first handshake.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


class TLSConfigError(ValueError):
    """A certificate setting names a file that cannot be read or used."""


def read_pem(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TLSConfigError(f"{setting}={path}: cannot read it ({error.strerror or error})") from None
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"{setting}={path}: not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class ServerTLS:
    """The files of a TLS listener, read and checked together."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    cert: bytes
    key: bytes
    client_ca: bytes | None

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ServerTLS:
        cert = read_pem(cert_file, "GLS_TLS_CERT_FILE")
        key = read_pem(key_file, "GLS_TLS_KEY_FILE")
        client_ca = read_pem(client_ca_file, "GLS_TLS_CLIENT_CA_FILE") if client_ca_file is not None else None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:  # the key must belong to the certificate: fail now, not at the first handshake
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as error:
            raise TLSConfigError(f"GLS_TLS_CERT_FILE={cert_file} and GLS_TLS_KEY_FILE={key_file} do not form a "
                                 f"certificate and its key ({error.reason or error})") from None
        return cls(cert_file, key_file, client_ca_file, cert, key, client_ca)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca,
                                           require_client_auth=self.mutual)

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file)}
        if self.client_ca_file is not None:
            options.update(ssl_ca_certs=str(self.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options


@dataclass(frozen=True)
class ClientTLS:
    """What a client trusts (a CA file, else the system's) and the certificate it shows (mutual TLS)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise TLSConfigError("a client certificate needs both GLS_CLIENT_CERT_FILE and GLS_CLIENT_KEY_FILE")

    def ssl_context(self) -> ssl.SSLContext:
        """For httpx: verify the server against the CA file (or the system's CAs), present the client's certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        root = read_pem(self.ca_file, "GLS_CA_FILE") if self.ca_file else None
        key = read_pem(self.key_file, "GLS_CLIENT_KEY_FILE") if self.key_file else None
        chain = read_pem(self.cert_file, "GLS_CLIENT_CERT_FILE") if self.cert_file else None
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


def secure_or_insecure_channel(address: str, tls: ClientTLS | None, options: list[tuple[str, Any]]) -> grpc.Channel:
    """A channel to ``address``: TLS when the client has TLS settings, plaintext (loopback clusters) otherwise."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.grpc_credentials(), options=options)
