"""Mutual TLS between the services: bound workers and their callers (WorkerPool, the gateway's Certifier).

A private CA made for the test signs the workers' and the callers' certificates (SANs 127.0.0.1 and
localhost, or only a service name). Workers run for real on loopback; callers with a certificate of
the CA get the same answers as in process, everyone else is refused at the handshake, the worker
token is still checked on top, and a bad certificate setting stops each process with exit status 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import Authority, make_authority
from pydantic import ValidationError
from test_gateway_support import digits_model, digits_test, start_stack, upload_digits_model

import gls_core
from gls_core.bounds.api import compute_bounds, margin_spec
from gls_core.data import load_dataset
from gls_core.evaluation import certify
from gls_core.training.estimators import Proposal
from gls_core.training.objective import Objective
from gls_core.training.points import evaluate_members
from services import codec
from services.bound_worker import RunningWorker, serve
from services.client import CertifierClient
from services.gateway import serve as serve_gateway
from services.proto.gls.v1 import bound_worker_pb2, bound_worker_pb2_grpc, common_pb2
from services.rich_status import error_info
from services.settings import Settings
from services.tls import TLSConfigError
from services.worker_client import NoWorkersError, WorkerPool
from services.worker_probe import check

ROOT = Path(__file__).resolve().parents[1]
SPEC = gls_core.network("cnn3-tiny", "digits")
DIGITS = load_dataset("digits", "train")
X, Y = DIGITS.x[:8], DIGITS.y[:8]
THETA = gls_core.kaiming_uniform(SPEC, generator=torch.Generator().manual_seed(3))
EPS, SEED, BLOCK = 0.05, 11, 2
TOKEN = "internal-s3cret"


def internal(authority: Authority, cert: Path, key: Path, **values: object) -> Settings:
    """Settings with GLS_INTERNAL_TLS_* pointing at ``cert``/``key`` and the authority's CA."""
    return Settings(internal_tls_cert_file=cert, internal_tls_key_file=key,  # type: ignore[arg-type]
                    internal_tls_ca_file=authority.ca, **values)


def worker_values(**overrides: object) -> dict[str, object]:
    return {"worker_host": "127.0.0.1", "worker_port": 0, "worker_register": False, "worker_cache_mb": 8,
            "worker_token": TOKEN, **overrides}


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def worker(authority: Authority) -> Iterator[RunningWorker]:
    running = serve(internal(authority, authority.server_cert, authority.server_key, **worker_values()))
    yield running
    running.stop()


def caller(authority: Authority, *workers: RunningWorker, **values: object) -> WorkerPool:
    """A coordinator's pool: its own certificate (the client one), the token, the workers as static addresses."""
    settings = internal(authority, authority.client_cert, authority.client_key, worker_token=TOKEN,
                        worker_addresses=",".join(w.address for w in workers), rpc_timeout_s=30, **values)
    return WorkerPool(settings, max_attempts=1, backoff_s=0.01)


def bounds_request() -> bound_worker_pb2.BoundsRequest:
    request = bound_worker_pb2.BoundsRequest(params=bound_worker_pb2.Blob(tensor=codec.tensor_to_proto(THETA)),
                                             inputs=bound_worker_pb2.Blob(tensor=codec.tensor_to_proto(X[:2])),
                                             perturbation=common_pb2.Perturbation(eps=EPS),
                                             relaxation=codec.relaxation_to_proto("ibp"))
    codec.spec_to_proto(SPEC, out=request.spec)
    return request


def refusal(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {TOKEN}"),)
            ) -> grpc.RpcError:
    """The error of a Bounds call and of a health check on ``channel`` (both must fail the same way)."""
    with channel:
        with pytest.raises(grpc.RpcError) as bounds:
            bound_worker_pb2_grpc.BoundWorkerStub(channel).Bounds(bounds_request(), metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as health:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.value.code() == bounds.value.code()
    return bounds.value


def test_a_pool_with_a_certificate_of_the_ca_gets_the_in_process_answers(authority: Authority,
                                                                         worker: RunningWorker) -> None:
    proposal = Proposal(step=1, seed=SEED, centre=THETA, sigma=torch.full_like(THETA, 0.02), count=4,
                        symmetric=True, needs_grads=False)
    objective = Objective("certified", "deeppoly")
    expected = evaluate_members(SPEC, proposal, objective, X, Y, EPS, SEED, BLOCK)
    with caller(authority, worker) as pool:
        got = pool.evaluate(SPEC, proposal, objective, X, Y, EPS, SEED, BLOCK)
        lower, upper = pool.bounds(SPEC, THETA, X, eps=EPS, method="deeppoly")
    assert torch.equal(got.losses, expected.losses) and got.grads is None
    with torch.no_grad():
        want_lower, want_upper = compute_bounds(SPEC, X, EPS, "deeppoly", params=THETA)
    torch.testing.assert_close((lower, upper), (want_lower, want_upper), rtol=1e-5, atol=1e-5)


def test_the_worker_refuses_callers_without_a_certificate_of_its_ca(authority: Authority, worker: RunningWorker,
                                                                    tmp_path: Path) -> None:
    served = worker.service.served
    trusted = authority.ca.read_bytes()
    stranger = make_authority(tmp_path / "other", "other-ca")
    channels = {
        "plaintext": grpc.insecure_channel(worker.address),
        "TLS without a certificate": grpc.secure_channel(
            worker.address, grpc.ssl_channel_credentials(root_certificates=trusted)),
        "a certificate of another CA": grpc.secure_channel(worker.address, grpc.ssl_channel_credentials(
            root_certificates=trusted, private_key=stranger.client_key.read_bytes(),
            certificate_chain=stranger.client_cert.read_bytes())),
    }
    for name, channel in channels.items():
        assert refusal(channel).code() == grpc.StatusCode.UNAVAILABLE, name
    # a caller with another CA's certificate and trust is refused by the worker, and does not trust it either
    with WorkerPool(Settings(internal_tls_cert_file=stranger.client_cert, internal_tls_key_file=stranger.client_key,
                             internal_tls_ca_file=stranger.ca, worker_token=TOKEN, worker_addresses=worker.address),
                    max_attempts=1, backoff_s=0.01) as pool, pytest.raises(NoWorkersError, match="UNAVAILABLE"):
        pool.bounds(SPEC, THETA, X[:2], eps=EPS, method="ibp")
    assert worker.service.served == served  # nothing reached the service

    # with the right certificate the token is still checked on top
    credentials = internal(authority, authority.client_cert, authority.client_key).internal_tls
    assert credentials is not None
    with grpc.secure_channel(worker.address, credentials.peer_credentials()) as channel:
        stub = bound_worker_pb2_grpc.BoundWorkerStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.Bounds(bounds_request(), metadata=(("authorization", "Bearer wrong"),), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(error.value) == ("UNAUTHENTICATED", {})
        answer = stub.Bounds(bounds_request(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
        assert list(answer.upper.shape) == [2, 10]


def test_the_probe_reaches_a_worker_under_mutual_tls(authority: Authority, worker: RunningWorker) -> None:
    probe = internal(authority, authority.server_cert, authority.server_key, worker_advertise=worker.address)
    assert check(probe) == "SERVING"  # in process: the worker's own pair, as in its container
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GLS_WORKER_ADVERTISE": worker.address,
           "GLS_INTERNAL_TLS_CERT_FILE": str(authority.server_cert),
           "GLS_INTERNAL_TLS_KEY_FILE": str(authority.server_key), "GLS_INTERNAL_TLS_CA_FILE": str(authority.ca)}
    secure = subprocess.Popen([sys.executable, "-m", "services.worker_probe"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    plain = subprocess.Popen([sys.executable, "-m", "services.worker_probe"], cwd=ROOT, text=True,
                             env={"PATH": env["PATH"], "GLS_WORKER_ADVERTISE": worker.address},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = secure.communicate(timeout=60)
    assert secure.returncode == 0 and out.strip() == f"{worker.address}: SERVING", err
    out, err = plain.communicate(timeout=60)
    assert plain.returncode == 1 and f"{worker.address}: UNAVAILABLE" in err, (out, err)
    plaintext_worker = serve(Settings(**worker_values()))  # type: ignore[arg-type]
    try:  # without GLS_INTERNAL_TLS_* (the compose default) the same probe speaks plaintext
        assert check(Settings(worker_advertise=plaintext_worker.address)) == "SERVING"
    finally:
        plaintext_worker.stop()


def test_one_certificate_for_all_workers_with_a_server_name(authority: Authority) -> None:
    cert, key = authority.issue("gls-worker", names=["gls-worker"])  # no address in it, as with pod IPs
    named = serve(internal(authority, cert, key, **worker_values()))
    try:
        with caller(authority, named) as pool, pytest.raises(NoWorkersError, match="UNAVAILABLE"):
            pool.bounds(SPEC, THETA, X[:2], eps=EPS, method="ibp")  # 127.0.0.1 is not in the certificate
        with caller(authority, named, internal_tls_server_name="gls-worker") as pool:
            lower, upper = pool.bounds(SPEC, THETA, X[:2], eps=EPS, method="ibp")
        with torch.no_grad():
            expected = compute_bounds(SPEC, X[:2], EPS, "ibp", params=THETA)
        torch.testing.assert_close((lower, upper), expected, rtol=1e-5, atol=1e-5)
    finally:
        named.stop()


def test_the_certifier_fans_out_to_workers_over_mutual_tls(authority: Authority, tmp_path: Path) -> None:
    # gateway and worker share one pair here; the Certifier's public side stays plaintext (its own settings)
    stack = start_stack(tmp_path, workers=1, worker_token=TOKEN, internal_tls_cert_file=authority.server_cert,
                        internal_tls_key_file=authority.server_key, internal_tls_ca_file=authority.ca)
    try:
        assert refusal(grpc.insecure_channel(stack.workers[0].address)).code() == grpc.StatusCode.UNAVAILABLE
        model_id = upload_digits_model(stack, tmp_path)
        spec, theta = digits_model()
        x, y = digits_test(30)
        expected = certify(spec, theta, x, y, 0.02, "deeppoly")
        assert 0 < int(expected.sum()) < 30
        with CertifierClient(stack.gateway.certifier_address, "alice-token", timeout=60) as client:
            answer = client.certify(x, y, 0.02, "deeppoly", model_id=model_id)
        assert [v["certified"] for v in answer["verdicts"]] == expected.tolist()
        with torch.no_grad():
            _, upper = compute_bounds(spec, x, 0.02, "deeppoly", C=margin_spec(y, 10), params=theta)
        torch.testing.assert_close(torch.tensor([v["margin_upper"] for v in answer["verdicts"]]), upper,
                                   rtol=1e-5, atol=1e-5)
        assert stack.workers[0].service.served > 0
    finally:
        stack.stop()


def test_bad_internal_tls_settings_are_named(authority: Authority, tmp_path: Path) -> None:
    for partial in ({"internal_tls_cert_file": authority.server_cert},
                    {"internal_tls_cert_file": authority.server_cert, "internal_tls_key_file": authority.server_key},
                    {"internal_tls_ca_file": authority.ca}):
        with pytest.raises(ValidationError, match="GLS_INTERNAL_TLS_CERT_FILE, GLS_INTERNAL_TLS_KEY_FILE and "
                                                  "GLS_INTERNAL_TLS_CA_FILE go together"):
            Settings(**partial)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="GLS_INTERNAL_TLS_SERVER_NAME needs"):
        Settings(internal_tls_server_name="gls-worker")

    other = make_authority(tmp_path / "other", "other-ca")
    (tmp_path / "text.pem").write_text("hello")
    server_only = authority.issue("server-only", usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    cases = [
        ((tmp_path / "gone.pem", authority.server_key, authority.ca), r"GLS_INTERNAL_TLS_CERT_FILE=.*gone.pem: cannot"),
        ((authority.server_cert, tmp_path / "text.pem", authority.ca), r"GLS_INTERNAL_TLS_KEY_FILE=.*not a PEM file"),
        ((authority.server_cert, authority.server_key, tmp_path / "gone.pem"), r"GLS_INTERNAL_TLS_CA_FILE=.*cannot"),
        ((authority.server_cert, authority.server_key, authority.server_key), r"GLS_INTERNAL_TLS_CA_FILE=.*not a CA"),
        ((authority.server_cert, other.server_key, authority.ca), "do not form a certificate and its key"),
        ((other.server_cert, other.server_key, authority.ca),
         r"GLS_INTERNAL_TLS_CERT_FILE=.* is not accepted by peers that trust GLS_INTERNAL_TLS_CA_FILE=.*"
         "unable to get local issuer certificate"),
        ((*server_only, authority.ca), "is not accepted by peers .*unsuitable certificate purpose"),
    ]
    for (cert, key, ca), message in cases:
        settings = Settings(internal_tls_cert_file=cert, internal_tls_key_file=key, internal_tls_ca_file=ca,
                            worker_port=0, worker_register=False)
        with pytest.raises(TLSConfigError, match=message):
            serve(settings)
        with pytest.raises(TLSConfigError, match=message):
            WorkerPool(settings)


def test_the_gateway_stops_on_a_bad_internal_tls_file_before_it_listens(authority: Authority,
                                                                        tmp_path: Path) -> None:
    # its __main__ turns TLSConfigError into exit status 2, as tests/test_tls.py checks for its own files
    settings = Settings(internal_tls_cert_file=authority.server_cert, internal_tls_key_file=tmp_path / "gone.pem",
                        internal_tls_ca_file=authority.ca, redis_url="redis://127.0.0.1:1/0", gateway_port=0,
                        certifier_port=0)
    with pytest.raises(TLSConfigError, match=r"GLS_INTERNAL_TLS_KEY_FILE=.*gone.pem: cannot read it"):
        serve_gateway(settings)


def test_each_service_exits_2_naming_a_bad_internal_tls_file(authority: Authority, tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GLS_REDIS_URL": "redis://127.0.0.1:1/0",
           "GLS_WORKER_PORT": "0", "GLS_GATEWAY_PORT": "0", "GLS_CERTIFIER_PORT": "0",
           "GLS_INTERNAL_TLS_CERT_FILE": str(authority.server_cert),
           "GLS_INTERNAL_TLS_KEY_FILE": str(tmp_path / "gone-key.pem"), "GLS_INTERNAL_TLS_CA_FILE": str(authority.ca)}
    processes = {module: subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for module in ("services.bound_worker", "services.coordinator")}
    for module, process in processes.items():
        _, err = process.communicate(timeout=120)
        assert process.returncode == 2, (module, err)
        assert "GLS_INTERNAL_TLS_KEY_FILE=" in err and "gone-key.pem: cannot read it" in err, (module, err)
