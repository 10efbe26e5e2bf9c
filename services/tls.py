"""TLS from certificate files: the public edges (REST, the gRPC Certifier), their clients, and between services.

An operator who exposes the gateway beyond loopback sets ``GLS_TLS_CERT_FILE`` and
``GLS_TLS_KEY_FILE`` (PEM); with ``GLS_TLS_CLIENT_CA_FILE`` as well, both listeners also require a
client certificate signed by that CA (mutual TLS). Clients trust a private CA with
``GLS_CA_FILE`` and present their own certificate with ``GLS_CLIENT_CERT_FILE`` / ``GLS_CLIENT_KEY_FILE``.
The files are read once at start-up, so a bad path stops the process with a message naming the
setting, not the first handshake.

Between the services (bound workers and their callers) ``GLS_INTERNAL_TLS_CERT_FILE``,
``GLS_INTERNAL_TLS_KEY_FILE`` and ``GLS_INTERNAL_TLS_CA_FILE`` give every process one certificate and
one CA: a worker serves with its certificate and requires a client certificate the CA signed, and a
caller trusts the CA and shows its own certificate (``ServerTLS.peer_credentials``).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
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
class TLSSettingNames:
    """The settings a listener's files come from, so that an error names the one to fix."""

    cert: str
    key: str
    ca: str


PUBLIC = TLSSettingNames("GLS_TLS_CERT_FILE", "GLS_TLS_KEY_FILE", "GLS_TLS_CLIENT_CA_FILE")
INTERNAL = TLSSettingNames("GLS_INTERNAL_TLS_CERT_FILE", "GLS_INTERNAL_TLS_KEY_FILE", "GLS_INTERNAL_TLS_CA_FILE")


def _handshake(client_context: ssl.SSLContext, server_context: ssl.SSLContext) -> None:
    """One TLS handshake in memory, no socket; an ``ssl.SSLError`` says why it failed."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    pending = [client_context.wrap_bio(client_in, client_out, server_side=False),
               server_context.wrap_bio(server_in, server_out, server_side=True)]
    for _ in range(8):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.remove(end)
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if not pending:
            return
    raise ssl.SSLError("the handshake did not finish")


def check_signed_by(cert_file: Path, key_file: Path, ca_file: Path, names: TLSSettingNames) -> None:
    """Fail unless a peer that trusts ``ca_file`` accepts ``cert_file`` as a server's and as a client's certificate.

    Every process both serves (or is dialled by) and dials its peers with the same pair, so a
    certificate from another CA, or one whose usage excludes a role, stops it at start-up instead
    of failing every call later. Host names are not checked here: they depend on who dials whom.
    """
    client, server = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for context in (client, server):
        context.load_cert_chain(cert_file, key_file)
        context.load_verify_locations(cafile=str(ca_file))
    client.check_hostname = False
    server.verify_mode = ssl.CERT_REQUIRED
    try:
        _handshake(client, server)
    except ssl.SSLError as error:
        why = getattr(error, "verify_message", None) or error.reason or error  # e.g. "unable to get local issuer"
        raise TLSConfigError(f"{names.cert}={cert_file} is not accepted by peers that trust {names.ca}={ca_file} "
                             f"({why})") from None


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
    def load(cls, cert_file: Path, key_file: Path, client_ca_file: Path | None,
             names: TLSSettingNames = PUBLIC) -> ServerTLS:
        cert = read_pem(cert_file, names.cert)
        key = read_pem(key_file, names.key)
        client_ca = read_pem(client_ca_file, names.ca) if client_ca_file is not None else None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:  # the key must belong to the certificate: fail now, not at the first handshake
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as error:
            raise TLSConfigError(f"{names.cert}={cert_file} and {names.key}={key_file} do not form a "
                                 f"certificate and its key ({error.reason or error})") from None
        if client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(client_ca_file))
            except ssl.SSLError as error:
                raise TLSConfigError(f"{names.ca}={client_ca_file}: not a CA certificate "
                                     f"({error.reason or error})") from None
        return cls(cert_file, key_file, client_ca_file, cert, key, client_ca)

    @classmethod
    def load_internal(cls, cert_file: Path, key_file: Path, ca_file: Path) -> ServerTLS:
        """The files of ``GLS_INTERNAL_TLS_*``: this process's certificate must be one its peers accept."""
        tls = cls.load(cert_file, key_file, ca_file, INTERNAL)
        check_signed_by(cert_file, key_file, ca_file, INTERNAL)
        return tls

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca,
                                           require_client_auth=self.mutual)

    def peer_credentials(self) -> grpc.ChannelCredentials:
        """Dial a peer of the same CA: trust only that CA and show this certificate (mutual TLS between services)."""
        if self.client_ca is None:
            raise TLSConfigError("dialling a peer with mutual TLS needs a CA file")
        return grpc.ssl_channel_credentials(root_certificates=self.client_ca, private_key=self.key,
                                            certificate_chain=self.cert)

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


def open_channel(address: str, credentials: grpc.ChannelCredentials | None,
                 options: Sequence[tuple[str, Any]]) -> grpc.Channel:
    """A channel to ``address``: TLS with ``credentials``, plaintext (loopback clusters) without."""
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, credentials, options=list(options))


def secure_or_insecure_channel(address: str, tls: ClientTLS | None, options: list[tuple[str, Any]]) -> grpc.Channel:
    """A channel to ``address``: TLS when the client has TLS settings, plaintext (loopback clusters) otherwise."""
    return open_channel(address, tls.grpc_credentials() if tls else None, options)


def peer_channel(address: str, tls: ServerTLS | None, server_name: str,
                 options: Sequence[tuple[str, Any]]) -> grpc.Channel:
    """A channel to a bound worker: mutual TLS with this process's certificate when configured, else plaintext.

    ``server_name`` (GLS_INTERNAL_TLS_SERVER_NAME) is checked in the worker's certificate instead of
    the dialled host, so that workers advertised by IP can share one certificate.
    """
    if tls is None:
        return open_channel(address, None, options)
    override = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return open_channel(address, tls.peer_credentials(), [*options, *override])
