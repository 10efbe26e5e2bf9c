"""The bound worker over real gRPC on loopback: results bit-identical to gls_core, every rejection, health,
reflection, and registration in a real redis-server (heartbeats, expiry, Redis restarts, SIGTERM)."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from servers import RedisServer, free_port, wait_for_port

import gls_core
from gls_core.data import load_dataset
from gls_core.training.estimators import Proposal
from gls_core.training.objective import Objective
from gls_core.training.points import evaluate_members
from services import codec
from services.bound_worker import RunningWorker, serve
from services.bound_worker import service as worker_service
from services.bound_worker.cache import BlobCache
from services.discovery import WORKERS_SET, Heartbeat, WorkerInfo, live_workers, register, worker_key
from services.proto.gls.v1 import bound_worker_pb2, bound_worker_pb2_grpc, common_pb2
from services.rich_status import error_info, field_violations
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SPEC = gls_core.network("cnn3-tiny", "digits")
DIGITS = load_dataset("digits", "train")
X, Y = DIGITS.x[:12], DIGITS.y[:12]
THETA = gls_core.kaiming_uniform(SPEC, generator=torch.Generator().manual_seed(0))
EPS = 0.05
SEED = 5


def worker_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"worker_host": "127.0.0.1", "worker_port": 0, "worker_register": False}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def worker() -> Iterator[RunningWorker]:
    running = serve(worker_settings(worker_cache_mb=8))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(worker: RunningWorker) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(worker.address) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> bound_worker_pb2_grpc.BoundWorkerStub:
    return bound_worker_pb2_grpc.BoundWorkerStub(channel)


def inline(tensor: torch.Tensor) -> bound_worker_pb2.Blob:
    return bound_worker_pb2.Blob(tensor=codec.tensor_to_proto(tensor))


def points_request(proposal: Proposal, objective: Objective, start: int = 0, stop: int | None = None,
                   block: int = 4, x: torch.Tensor = X, y: torch.Tensor = Y) -> bound_worker_pb2.PointsRequest:
    request = bound_worker_pb2.PointsRequest(
        centre=inline(proposal.centre), sigma=inline(proposal.sigma), inputs=inline(x), labels=inline(y),
        start=start, stop=proposal.count if stop is None else stop, block=block, eps=EPS,
        **codec.proposal_fields(proposal))
    codec.spec_to_proto(SPEC, out=request.spec)
    codec.objective_to_proto(objective, out=request.objective)
    return request


def pgpe(count: int = 8) -> Proposal:
    return Proposal(step=3, seed=SEED, centre=THETA, sigma=torch.full_like(THETA, 0.02), count=count,
                    symmetric=True, needs_grads=False)


def rgs() -> Proposal:
    return Proposal(step=4, seed=SEED, centre=THETA, sigma=torch.full_like(THETA, 0.01), count=3, symmetric=False,
                    needs_grads=True)


ALPHA = Objective("certified", "alpha-crown", {"steps": 2, "step_size": 0.25, "init": 0.5})
DEEPPOLY = Objective("certified", "deeppoly")


def decode(message: common_pb2.Tensor) -> torch.Tensor:
    return codec.tensor_from_proto(message)


# ------------------------------------------------------------------------------- health and reflection


def test_health_is_serving_for_the_server_and_the_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "gls.v1.BoundWorker"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"gls.v1.BoundWorker", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    described = database.FindFileContainingSymbol("gls.v1.BoundWorker")
    assert described.name == "gls/v1/bound_worker.proto"


def test_health_turns_not_serving_on_stop() -> None:
    running = serve(worker_settings())
    with grpc.insecure_channel(running.address) as opened:
        health = health_pb2_grpc.HealthStub(opened)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="gls.v1.BoundWorker"))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        running.stop(grace=0.2)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()


# ---------------------------------------------------------------------------- results equal gls_core


def test_pgpe_losses_equal_evaluate_members_bit_for_bit(stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    proposal = pgpe(12)
    expected = evaluate_members(SPEC, proposal, ALPHA, X, Y, EPS, SEED, 4)
    whole = stub.EvaluatePoints(points_request(proposal, ALPHA))
    assert torch.equal(decode(whole.losses), expected.losses)
    assert not whole.HasField("gradients") and whole.compute_seconds > 0
    part = stub.EvaluatePoints(points_request(proposal, ALPHA, start=4, stop=12))
    assert torch.equal(decode(part.losses), expected.losses[4:12])


def test_rgs_gradients_equal_evaluate_members_bit_for_bit(stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    proposal = rgs()
    expected = evaluate_members(SPEC, proposal, DEEPPOLY, X, Y, EPS, SEED, 2)
    assert expected.grads is not None
    response = stub.EvaluatePoints(points_request(proposal, DEEPPOLY, start=2, stop=3, block=2))
    assert torch.equal(decode(response.losses), expected.losses[2:])
    assert torch.equal(decode(response.gradients), expected.grads[2:])


def test_standard_and_adversarial_objectives_match(stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    proposal = Proposal(step=1, seed=SEED, centre=THETA, sigma=torch.zeros_like(THETA), count=1, symmetric=False,
                        needs_grads=True)
    for objective in (Objective("standard"), Objective("adversarial", pgd_steps=3, pgd_step_size=0.3)):
        expected = evaluate_members(SPEC, proposal, objective, X, Y, EPS, SEED, 1)
        response = stub.EvaluatePoints(points_request(proposal, objective, block=1))
        assert torch.equal(decode(response.losses), expected.losses)
        assert expected.grads is not None and torch.equal(decode(response.gradients), expected.grads)


def test_blobs_can_be_named_by_hash_once_sent(worker: RunningWorker,
                                              stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    proposal = pgpe()
    first = points_request(proposal, DEEPPOLY)
    expected = stub.EvaluatePoints(first).losses
    by_hash = points_request(proposal, DEEPPOLY)
    for name in ("centre", "sigma", "inputs", "labels"):
        sha = codec.content_hash(getattr(first, name).tensor)
        getattr(by_hash, name).CopyFrom(bound_worker_pb2.Blob(sha256=sha))
        assert sha in worker.cache
    assert by_hash.ByteSize() < 1000
    assert stub.EvaluatePoints(by_hash).losses == expected


def test_bounds_equal_compute_bounds(stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    population = pgpe().points()
    request = bound_worker_pb2.BoundsRequest(params=inline(population), inputs=inline(X), labels=inline(Y),
                                             perturbation=common_pb2.Perturbation(eps=EPS),
                                             relaxation=codec.relaxation_to_proto("crown-ibp"))
    codec.spec_to_proto(SPEC, out=request.spec)
    response = stub.Bounds(request)
    _, upper = gls_core.compute_bounds(SPEC, X, EPS, "crown-ibp", C=gls_core.margin_spec(Y, 10),
                                       params=population, sides="upper")
    # With labels the worker computes the margins' upper bounds only (all that losses and certification read).
    assert torch.equal(decode(response.upper), upper)
    assert bool((decode(response.lower) == -math.inf).all())
    assert tuple(upper.shape) == (8, 12, 9)

    radii = torch.linspace(0, 0.1, X.shape[0])
    single = bound_worker_pb2.BoundsRequest(params=inline(THETA), inputs=inline(X),
                                            perturbation=common_pb2.Perturbation(
                                                eps_per_input=codec.tensor_to_proto(radii)),
                                            relaxation=codec.relaxation_to_proto("alpha-crown", {"steps": 2}))
    codec.spec_to_proto(SPEC, out=single.spec)
    response = stub.Bounds(single)
    lower, upper = gls_core.compute_bounds(SPEC, X, radii, "alpha-crown", params=THETA, steps=2)
    assert tuple(lower.shape) == (12, 10)
    assert torch.equal(decode(response.lower), lower) and torch.equal(decode(response.upper), upper)


# ---------------------------------------------------------------------------------------- rejections

Mutation = Callable[[bound_worker_pb2.PointsRequest], None]


def _set_blob(name: str, tensor: torch.Tensor) -> Mutation:
    return lambda request: getattr(request, name).CopyFrom(inline(tensor))


def _with_nan(tensor: torch.Tensor, value: float = math.nan) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[0] = value
    return tensor


def _set(**fields: object) -> Mutation:
    def mutate(request: bound_worker_pb2.PointsRequest) -> None:
        for name, value in fields.items():
            setattr(request, name, value)
    return mutate


def _truncate_inputs(request: bound_worker_pb2.PointsRequest) -> None:
    request.inputs.tensor.data = request.inputs.tensor.data[:-4]


def _relaxation(method: str) -> Mutation:
    return lambda request: setattr(request.objective.relaxation, "method", method)


def _bad_spec(request: bound_worker_pb2.PointsRequest) -> None:
    request.spec.layers[-1].linear.in_features = 7


def _wrong_hash(request: bound_worker_pb2.PointsRequest) -> None:
    request.centre.sha256 = "0" * 64


def _no_centre(request: bound_worker_pb2.PointsRequest) -> None:
    request.ClearField("centre")


def _no_kind(request: bound_worker_pb2.PointsRequest) -> None:
    request.objective.kind = bound_worker_pb2.Objective.KIND_UNSPECIFIED


INVALID_POINTS: dict[str, tuple[Mutation, str, str]] = {  # the mutation, the field named, the message
    "unknown relaxation": (_relaxation("zonotope"), "objective.relaxation.method",
                           "objective.relaxation.method: unknown relaxation 'zonotope'"),
    "theta length": (_set_blob("centre", THETA[:-1]), "centre", f"centre: must have shape \\[{THETA.numel()}\\]"),
    "sigma shape": (_set_blob("sigma", torch.zeros(3)), "sigma", "sigma: must match centre"),
    "negative sigma": (_set_blob("sigma", -torch.ones_like(THETA)), "sigma", "sigma: must be >= 0"),
    "input shape": (_set_blob("inputs", torch.zeros(12, 1, 7, 7)), "inputs", r"inputs: must have shape \[B, 1, 8, 8\]"),
    "empty batch": (_set_blob("inputs", torch.zeros(0, 1, 8, 8)), "inputs", "inputs: is an empty batch"),
    "input dtype": (_set_blob("inputs", X.to(torch.uint8)), "inputs.dtype",
                    "inputs.dtype: must be float32 or float64, got uint8"),
    "label dtype": (_set_blob("labels", Y.float()), "labels.dtype", "labels.dtype: must be int64, got float32"),
    "label count": (_set_blob("labels", Y[:5]), "labels", r"labels: must have shape \[12\]"),
    "label range": (_set_blob("labels", Y + 10), "labels.0", r"labels.0: label 1\d is not a class of the network "
                                                             r"\(0..9\)"),
    "nan theta": (_set_blob("centre", _with_nan(THETA)), "centre", "centre: contains NaN or inf"),
    "inf sigma": (_set_blob("sigma", _with_nan(torch.zeros_like(THETA), math.inf)), "sigma",
                  "sigma: contains NaN or inf"),
    "nan input": (_set_blob("inputs", _with_nan(X)), "inputs", "inputs: contains NaN or inf"),
    "input range": (_set_blob("inputs", X + 1.5), "inputs", r"inputs: must lie in \[0, 1\]"),
    "negative eps": (_set(eps=-0.1), "eps", "eps: must be finite and >= 0"),
    "nan eps": (_set(eps=math.nan), "eps", "eps: must be finite and >= 0"),
    "misaligned": (_set(start=2), "start", "start: member range \\[2, 8\\) is not aligned to blocks of 4"),
    "empty range": (_set(start=4, stop=4), "stop", r"stop: member range \[4, 4\) is empty"),
    "beyond count": (_set(stop=12), "stop", "exceeds the population of 8"),
    "odd pairs": (_set(count=7, stop=7), "count", "count: must be even for symmetric pairs"),
    "zero block": (_set(block=0), "block", "block: must be an integer >= 1"),
    "alpha gradients": (_set(want_gradients=True), "want_gradients",
                        "want_gradients: alpha-crown has no weight gradients"),
    "bad spec": (_bad_spec, "spec", "spec: layer 5: Linear expects"),
    "byte length": (_truncate_inputs, "inputs.data", "inputs.data: has 3068 bytes"),
    "hash mismatch": (_wrong_hash, "centre.sha256", "centre.sha256: 0{64} does not match its tensor"),
    "no centre": (_no_centre, "centre", "centre: is missing"),
    "no kind": (_no_kind, "objective.kind", "objective.kind: must be"),
}


def assert_invalid(error: grpc.RpcError, field: str, match: str) -> None:
    """INVALID_ARGUMENT whose message matches and whose BadRequest names ``field`` (read from the error, not text)."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(match, error.details() or ""), error.details()
    assert [name for name, _ in field_violations(error)] == [field]
    assert error_info(error) == ("INVALID_REQUEST", {})


@pytest.mark.parametrize("case", sorted(INVALID_POINTS))
def test_invalid_points_requests_are_rejected_and_the_worker_keeps_serving(
        case: str, stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    mutate, field, match = INVALID_POINTS[case]
    request = points_request(pgpe(), ALPHA)
    mutate(request)
    with pytest.raises(grpc.RpcError) as raised:
        stub.EvaluatePoints(request)
    assert_invalid(raised.value, field, match)
    assert stub.EvaluatePoints(points_request(pgpe(2), DEEPPOLY, block=2)).losses.shape == [2]


def _bounds_request(**fields: object) -> bound_worker_pb2.BoundsRequest:
    values: dict[str, object] = {"params": inline(THETA), "inputs": inline(X), "labels": inline(Y),
                                 "perturbation": common_pb2.Perturbation(eps=EPS),
                                 "relaxation": common_pb2.Relaxation(method="ibp")}
    values.update(fields)
    request = bound_worker_pb2.BoundsRequest(**values)  # type: ignore[arg-type]
    codec.spec_to_proto(SPEC, out=request.spec)
    return request


INVALID_BOUNDS: dict[str, tuple[bound_worker_pb2.BoundsRequest, str, str]] = {
    "params length": (_bounds_request(params=inline(torch.zeros(2, 5))), "params",
                      r"params: must have shape \[P, 208\] or \[208\]"),
    "params nan": (_bounds_request(params=inline(_with_nan(THETA))), "params", "params: contains NaN or inf"),
    "no relaxation": (_bounds_request(relaxation=None), "relaxation", "relaxation: is missing"),
    "unknown relaxation": (_bounds_request(relaxation=common_pb2.Relaxation(method="poly")), "relaxation.method",
                           "relaxation.method: unknown relaxation 'poly'"),
    "alpha steps": (_bounds_request(relaxation=common_pb2.Relaxation(method="alpha-crown", alpha_steps=100_000_000)),
                    "relaxation.alpha_steps",
                    r"relaxation.alpha_steps: must be an integer in \[0, 1000\]"),  # unbounded work otherwise
    "eps per input": (_bounds_request(perturbation=common_pb2.Perturbation(
        eps_per_input=codec.tensor_to_proto(torch.zeros(3)))), "perturbation.eps_per_input",
        r"perturbation.eps_per_input: must be a scalar or have shape \[12\]"),
    "negative eps per input": (_bounds_request(perturbation=common_pb2.Perturbation(
        eps_per_input=codec.tensor_to_proto(-torch.ones(12)))), "perturbation.eps_per_input",
        "perturbation.eps_per_input: must be finite and >= 0, got -1 at index 0"),
    "negative eps": (_bounds_request(perturbation=common_pb2.Perturbation(eps=-1)), "perturbation.eps",
                     "perturbation.eps: must be finite and >= 0"),
    "labels": (_bounds_request(labels=inline(-Y - 1)), "labels.0", r"labels.0: label -\d+ is not a class"),
    "inputs": (_bounds_request(inputs=inline(X.double() * 3)), "inputs", r"inputs: must lie in \[0, 1\]"),
}


@pytest.mark.parametrize("case", sorted(INVALID_BOUNDS))
def test_invalid_bounds_requests_are_rejected(case: str, stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    request, field, match = INVALID_BOUNDS[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Bounds(request)
    assert_invalid(raised.value, field, match)
    assert stub.Bounds(_bounds_request()).lower.shape == [12, 9]


def test_unknown_blob_is_a_failed_precondition_naming_it(stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    request = points_request(pgpe(), DEEPPOLY)
    sha = "ab" * 32
    request.inputs.CopyFrom(bound_worker_pb2.Blob(sha256=sha))
    with pytest.raises(grpc.RpcError) as raised:
        stub.EvaluatePoints(request)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == f"missing blob {sha}"
    assert error_info(raised.value) == ("MISSING_BLOB", {"sha256": sha})  # what the pool branches on
    request.inputs.sha256 = "not-a-hash"
    with pytest.raises(grpc.RpcError) as raised:
        stub.EvaluatePoints(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "64 lowercase hex" in str(raised.value.details())


def test_oversized_messages_are_resource_exhausted() -> None:
    small = serve(worker_settings(max_message_mb=1))
    try:
        with grpc.insecure_channel(small.address) as opened:
            stub = bound_worker_pb2_grpc.BoundWorkerStub(opened)
            big = torch.rand(5000, 1, 8, 8)  # 1.28 MB of inputs, over the 1 MiB limit
            request = points_request(pgpe(), DEEPPOLY, x=big, y=torch.zeros(5000, dtype=torch.int64))
            with pytest.raises(grpc.RpcError) as raised:
                stub.EvaluatePoints(request)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.EvaluatePoints(points_request(pgpe(2), DEEPPOLY, block=2)).losses.shape == [2]
    finally:
        small.stop()


@pytest.mark.parametrize("kind", [RuntimeError, ValueError])
def test_unexpected_errors_are_internal_and_the_worker_keeps_serving(
        kind: type[Exception], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    """Fault injection: gls_core failing in a way no validation foresaw (here: a simulated allocation failure).
    A bare ValueError out of the computation is a bug too: only InvalidInput is the caller's mistake."""
    def failing(*args: object, **kwargs: object) -> None:
        raise kind("simulated: out of memory")

    monkeypatch.setattr(worker_service, "evaluate_members", failing)
    with pytest.raises(grpc.RpcError) as raised:
        stub.EvaluatePoints(points_request(pgpe(), DEEPPOLY))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    details = raised.value.details()
    found = re.fullmatch(r"EvaluatePoints failed: internal error \(incident ([0-9a-f]{12}); the server's log has "
                         r"the details\)", details)
    assert found is not None and "memory" not in details, details  # the error's text is not sent to the caller
    assert error_info(raised.value) == ("INTERNAL_ERROR", {"incident": found.group(1)})
    logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "simulated: out of memory" in str(logged[0].exc_info[1])
    monkeypatch.undo()
    assert stub.EvaluatePoints(points_request(pgpe(2), DEEPPOLY, block=2)).losses.shape == [2]


def test_blob_cache_is_a_byte_bounded_lru() -> None:
    cache = BlobCache(capacity_bytes=100)
    a, b, c = torch.zeros(10), torch.zeros(10), torch.zeros(10)  # 40 bytes each
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # now b is the least recently used
    cache.put("c", c)
    assert "b" not in cache and "a" in cache and "c" in cache and cache.size_bytes == 80
    cache.put("huge", torch.zeros(100))
    assert "huge" not in cache and len(cache) == 2


# ---------------------------------------------------------------------------------------- discovery


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def registered_settings(url: str, **overrides: object) -> Settings:
    return worker_settings(worker_register=True, redis_url=url, heartbeat_s=0.1, heartbeat_ttl_s=0.5, **overrides)


def test_worker_registers_heartbeats_and_deregisters_on_stop(redis_server: RedisServer) -> None:
    client = redis_server.client()
    running = serve(registered_settings(redis_server.url))
    try:
        wait_until(lambda: live_workers(client))
        (info,) = live_workers(client)
        assert (info.id, info.address, info.device, info.pid) == (running.id, running.address, "cpu", os.getpid())
        assert 0 < client.pttl(worker_key(info.id)) <= 500
        assert client.smembers(WORKERS_SET) == {info.id.encode()}
        time.sleep(0.7)  # longer than the TTL: only the heartbeat keeps it alive
        assert [w.id for w in live_workers(client)] == [running.id]
    finally:
        running.stop()
    assert client.get(worker_key(running.id)) is None and client.smembers(WORKERS_SET) == set()


def test_dead_workers_expire_and_are_dropped(redis_server: RedisServer) -> None:
    client = redis_server.client()
    alive = WorkerInfo("alive", "127.0.0.1:1", "cpu", 1, time.time())
    crashed = WorkerInfo("crashed", "127.0.0.1:2", "cpu", 2, time.time())
    beating = Heartbeat(client, alive, 0.05, 0.3).start()
    register(client, crashed, 0.2)  # one heartbeat, then silence: a crash
    client.sadd(WORKERS_SET, "never-had-a-key")
    try:
        wait_until(lambda: [w.id for w in live_workers(client)] == ["alive"], timeout=5)
        assert client.smembers(WORKERS_SET) == {b"alive"}
    finally:
        beating.stop()
    assert live_workers(client) == []


def test_worker_re_registers_after_redis_is_killed_and_restarted(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "first").start()
    running = serve(registered_settings(server.url))
    try:
        wait_until(lambda: live_workers(server.client()))
        server.kill()
        time.sleep(0.3)  # several failed heartbeats; the worker keeps serving meanwhile
        with grpc.insecure_channel(running.address) as opened:
            stub = bound_worker_pb2_grpc.BoundWorkerStub(opened)
            assert stub.EvaluatePoints(points_request(pgpe(2), DEEPPOLY, block=2)).losses.shape == [2]
        assert running.heartbeat is not None and running.heartbeat.failures > 0
        server = RedisServer(tmp_path / "second", port=server.port).start()  # empty: the registration was lost
        wait_until(lambda: [w.id for w in live_workers(server.client())] == [running.id])
    finally:
        running.stop()
        server.stop()


def test_module_entry_point_serves_registers_and_stops_on_sigterm(redis_server: RedisServer) -> None:
    port = free_port()
    env = {**os.environ, "GLS_WORKER_HOST": "127.0.0.1", "GLS_WORKER_PORT": str(port), "GLS_THREADS": "1",
           "GLS_REDIS_URL": redis_server.url, "GLS_HEARTBEAT_S": "0.2", "GLS_WORKER_GRACE_S": "1"}
    process = subprocess.Popen([sys.executable, "-m", "services.bound_worker"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=60)
        client = redis_server.client()
        wait_until(lambda: live_workers(client))
        assert live_workers(client)[0].address == f"127.0.0.1:{port}"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
            health = health_pb2_grpc.HealthStub(opened)
            assert health.Check(health_pb2.HealthCheckRequest(service="gls.v1.BoundWorker")).status == \
                health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr.decode()
        assert b"received SIGTERM" in stderr and b"stopped" in stderr
        assert live_workers(client) == [] and client.smembers(WORKERS_SET) == set()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_redis_down_at_start_does_not_stop_the_worker() -> None:
    running = serve(registered_settings(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        wait_until(lambda: running.heartbeat is not None and running.heartbeat.failures >= 2)
        with grpc.insecure_channel(running.address) as opened:
            stub = bound_worker_pb2_grpc.BoundWorkerStub(opened)
            assert stub.EvaluatePoints(points_request(pgpe(2), DEEPPOLY, block=2)).losses.shape == [2]
    finally:
        running.stop()


def verify_request(inputs: torch.Tensor, labels: torch.Tensor, eps: float, timeout: float
                   ) -> bound_worker_pb2.VerifyRequest:
    request = bound_worker_pb2.VerifyRequest(params=inline(THETA), inputs=inline(inputs), labels=inline(labels),
                                             perturbation=common_pb2.Perturbation(eps=eps), timeout_seconds=timeout)
    codec.spec_to_proto(SPEC, out=request.spec)
    return request


def test_verify_decides_each_input_and_checks_counterexamples(stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    from gls_core.verify import Property

    predicted = gls_core.forward(SPEC, THETA.view(1, -1), X[:4])[0].argmax(1)
    wrong = (predicted + 1) % 10  # misclassified: falsified at once, the clean input is a counterexample
    response = stub.Verify(verify_request(X[:4], torch.cat([predicted[:2], wrong[2:]]), 0.0, 10))
    statuses = [v.status for v in response.verdicts]
    assert statuses == ["verified", "verified", "falsified", "falsified"]
    for verdict, label in zip(response.verdicts[2:], wrong[2:].tolist()):
        point = decode(verdict.counterexample).double()
        C = -torch.eye(10, dtype=torch.float64)[[j for j in range(10) if j != label]]
        C[:, label] = 1
        prop = Property(point, point, C, torch.zeros(9, dtype=torch.float64))
        assert float(prop.rows(SPEC, THETA.double(), point.unsqueeze(0)).min()) <= 0
    assert response.compute_seconds > 0


def test_verify_rejects_timeouts_beyond_the_cap(stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    for timeout in (0.0, -1.0, 1e9, math.inf):
        with pytest.raises(grpc.RpcError) as error:
            stub.Verify(verify_request(X[:1], Y[:1], 0.05, timeout))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "timeout_seconds: must lie in (0, 300]" in (error.value.details() or "")


def test_undecodable_payloads_are_invalid_argument_naming_the_request(channel: grpc.Channel) -> None:
    """Garbage with the right token (none is asked here): the method parses it and says so, without an incident."""
    for method, kind in (("EvaluatePoints", "PointsRequest"), ("Bounds", "BoundsRequest"),
                         ("Verify", "VerifyRequest")):
        call = channel.unary_unary(f"/gls.v1.BoundWorker/{method}", request_serializer=None,
                                   response_deserializer=None)
        for payload in (b"\xff\xff\xff\xff", b"\x0a\x80", bytes(range(256))):
            with pytest.raises(grpc.RpcError) as error:
                call(payload, timeout=10)
            assert_invalid(error.value, "request", re.escape(f"request: the payload is not a valid gls.v1.{kind} "
                                                             "(protobuf parse error)"))
            assert "incident" not in (error.value.details() or "")
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status == \
        health_pb2.HealthCheckResponse.SERVING


def test_a_worker_token_is_required_from_every_caller_but_probes() -> None:
    from services.worker_client import WorkerPool

    running = serve(worker_settings(worker_cache_mb=8, worker_token="s3cret"))
    try:
        request = bound_worker_pb2.BoundsRequest(params=inline(THETA), inputs=inline(X[:2]),
                                                 perturbation=common_pb2.Perturbation(eps=EPS),
                                                 relaxation=codec.relaxation_to_proto("ibp"))
        codec.spec_to_proto(SPEC, out=request.spec)
        with grpc.insecure_channel(running.address) as channel:
            stub = bound_worker_pb2_grpc.BoundWorkerStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
                with pytest.raises(grpc.RpcError) as error:
                    stub.Bounds(request, metadata=metadata)
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert error_info(error.value) == ("UNAUTHENTICATED", {})
            assert running.service.served == 0  # refused before any decoding or computing
            assert stub.Bounds(request, metadata=(("authorization", "Bearer s3cret"),)).upper.shape == [2, 10]
            health = health_pb2_grpc.HealthStub(channel)  # probes need no secret
            assert health.Check(health_pb2.HealthCheckRequest(service="")).status == \
                health_pb2.HealthCheckResponse.SERVING
        for token, works in (("s3cret", True), ("", False)):
            pool = WorkerPool(worker_settings(worker_token=token, worker_addresses=running.address), max_attempts=1)
            try:
                if works:
                    lower, _ = pool.bounds(SPEC, THETA, X[:2], eps=EPS, method="ibp")
                    assert lower.shape == (2, 10)
                else:
                    with pytest.raises(Exception, match="UNAUTHENTICATED"):
                        pool.bounds(SPEC, THETA, X[:2], eps=EPS, method="ibp")
            finally:
                pool.close()
    finally:
        running.stop()


def test_alpha_crown_stops_when_its_caller_has_gone(worker: RunningWorker,
                                                     stub: bound_worker_pb2_grpc.BoundWorkerStub) -> None:
    inputs = DIGITS.x[:64]
    request = bound_worker_pb2.BoundsRequest(params=inline(THETA), inputs=inline(inputs),
                                             labels=inline(DIGITS.y[:64]),
                                             perturbation=common_pb2.Perturbation(eps=EPS),
                                             relaxation=codec.relaxation_to_proto("alpha-crown", {"steps": 1000}))
    codec.spec_to_proto(SPEC, out=request.spec)
    abandoned = worker.service.abandoned
    with pytest.raises(grpc.RpcError) as error:
        stub.Bounds(request, timeout=1.0)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The 1000 steps take about 20 s on 2 idle cores, the deadline 1 s: the worker must notice the caller
    # has gone between steps and stop (counted in `abandoned`), not compute to the end. The wait below only
    # bounds a hang; the assertion does not depend on how loaded the machine is.
    deadline = time.monotonic() + 120
    while worker.service.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.service.in_flight == 0
    assert worker.service.abandoned == abandoned + 1, "the worker kept computing for a caller that had gone"
