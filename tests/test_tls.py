"""TLS and mutual TLS on the gateway's REST and gRPC Certifier, with certificates made for the test.

A private CA signs the server's certificate (for 127.0.0.1) and a client's; the gateway runs for
real (redis-server, uvicorn, grpc) on loopback. Clients that trust the CA get answers; plaintext
clients, clients that do not trust it, and (with mutual TLS) clients without a certificate do not.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import Authority, make_authority
from pydantic import ValidationError
from test_gateway_support import ALICE, Stack, start_stack

from services.client import CertifierClient, ClientError, GlsClient
from services.settings import Settings
from services.tls import ClientTLS, TLSConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_authority(tmp_path_factory.mktemp("pki"))


def _stack(folder: Path, authority: Authority, mutual: bool) -> Iterator[Stack]:
    stack = start_stack(folder, workers=0, tls_cert_file=authority.server_cert, tls_key_file=authority.server_key,
                        tls_client_ca_file=authority.ca if mutual else None)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory.mktemp("tls"), authority, mutual=False)


@pytest.fixture(scope="module")
def mtls_stack(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory.mktemp("mtls"), authority, mutual=True)


def _health(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_rest_and_certifier_speak_tls_to_clients_that_trust_the_ca(tls_stack: Stack, authority: Authority) -> None:
    url = tls_stack.gateway.url
    assert url.startswith("https://127.0.0.1:")
    trusted = ClientTLS(ca_file=authority.ca)
    with GlsClient(url, ALICE, tls=trusted) as client:
        assert client.models() == []
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/healthz", timeout=5)  # the system's CAs do not know the test CA
    plain = url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/healthz", timeout=5)
    address = tls_stack.gateway.certifier_address
    assert _health(address, trusted.grpc_credentials()) == "SERVING"
    with pytest.raises(grpc.RpcError) as refused:
        _health(address, None)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    x, y = torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long)
    with CertifierClient(address, "not-a-token", tls=trusted, timeout=10) as certifier, \
            pytest.raises(ClientError, match="UNAUTHENTICATED"):  # the token is still checked over TLS
        certifier.certify(x, y, 0.01, "ibp", model_id="model-nothing")
    with CertifierClient(address, ALICE, tls=trusted, timeout=10) as certifier, \
            pytest.raises(ClientError, match="NOT_FOUND"):  # authenticated: the request reaches the Certifier
        certifier.certify(x, y, 0.01, "ibp", model_id="model-nothing")


def test_mutual_tls_requires_a_client_certificate_signed_by_the_ca(mtls_stack: Stack, authority: Authority,
                                                                   tmp_path: Path) -> None:
    url = mtls_stack.gateway.url
    with GlsClient(url, ALICE, tls=ClientTLS(authority.ca, authority.client_cert, authority.client_key)) as client:
        assert client.models() == []
    with GlsClient(url, ALICE, tls=ClientTLS(ca_file=authority.ca)) as anonymous, \
            pytest.raises(ClientError, match="cannot reach the gateway"):  # the handshake is refused
        anonymous.models()
    stranger = make_authority(tmp_path / "other", "other-ca")  # a certificate the gateway's CA did not sign
    with GlsClient(url, ALICE, tls=ClientTLS(authority.ca, stranger.client_cert, stranger.client_key)) as client, \
            pytest.raises(ClientError, match="cannot reach the gateway"):
        client.models()
    address = mtls_stack.gateway.certifier_address
    assert _health(address, ClientTLS(authority.ca, authority.client_cert, authority.client_key)
                   .grpc_credentials()) == "SERVING"
    with pytest.raises(grpc.RpcError) as refused:
        _health(address, ClientTLS(ca_file=authority.ca).grpc_credentials())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bad_tls_settings_are_named_before_anything_listens(authority: Authority, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="GLS_TLS_CERT_FILE and GLS_TLS_KEY_FILE go together"):
        Settings(tls_cert_file=authority.server_cert)
    with pytest.raises(ValidationError, match="GLS_TLS_CLIENT_CA_FILE"):
        Settings(tls_client_ca_file=authority.ca)
    missing = Settings(tls_cert_file=tmp_path / "nothing.pem", tls_key_file=authority.server_key)
    with pytest.raises(TLSConfigError, match=r"GLS_TLS_CERT_FILE=.*nothing.pem: cannot read it"):
        _ = missing.server_tls
    other = make_authority(tmp_path / "other", "other-ca")
    mismatched = Settings(tls_cert_file=authority.server_cert, tls_key_file=other.server_key)
    with pytest.raises(TLSConfigError, match="do not form a certificate and its key"):
        _ = mismatched.server_tls
    (tmp_path / "text.pem").write_text("hello")
    with pytest.raises(TLSConfigError, match="not a PEM file"):
        _ = Settings(tls_cert_file=tmp_path / "text.pem", tls_key_file=authority.server_key).server_tls
    with pytest.raises(TLSConfigError, match="both GLS_CLIENT_CERT_FILE and GLS_CLIENT_KEY_FILE"):
        ClientTLS(cert_file=authority.client_cert)


def test_the_gateway_process_refuses_to_start_with_an_unreadable_certificate(authority: Authority,
                                                                            tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GLS_TLS_CERT_FILE": str(tmp_path / "gone.pem"),
           "GLS_TLS_KEY_FILE": str(authority.server_key), "GLS_GATEWAY_PORT": "0", "GLS_CERTIFIER_PORT": "0",
           "GLS_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "GLS_TLS_CERT_FILE=" in done.stderr and "gone.pem: cannot read it" in done.stderr
