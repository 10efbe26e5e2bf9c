"""Fuzzing every gRPC method of the bound worker and the Certifier: no INTERNAL, no UNKNOWN, no echo, no hang.

One real stack serves the file (``test_gateway_support.start_stack``): a private redis-server, the
gateway with its Certifier, and one bound worker that requires ``GLS_WORKER_TOKEN``, all on
loopback. Every method gets:

- random bytes, and valid encodings with bytes overwritten, truncated or appended, as its raw payload.
  Both services parse payloads themselves, after checking the token, and answer one that the method's
  message cannot parse INVALID_ARGUMENT naming ``request`` (never grpcio's INTERNAL "Exception
  deserializing request!"). The test parses each payload itself and expects exactly that answer for
  those and a non-INTERNAL one for every payload that parses;
- decodable messages with fields set to extremes, built by walking the message descriptors, so that no
  field is left out: a sweep sets each field of each valid base request to each of its extreme values,
  then hypothesis combines up to three such changes (the sizes are in ``docs/services.md``);
- calls without a token, with a wrong one, and to unknown method names.

Every call has a deadline; an answer must be a code the services document, with details of at most
``MAX_DETAILS`` characters (the 10,000-character inputs must not come back). Each test ends by checking
that the servers still give the right numbers for a valid request and report SERVING.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import torch
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gateway_support import ALICE, Stack, digits_model, digits_test, start_stack

from gls_core.bounds.api import compute_bounds, margin_spec
from gls_core.evaluation import certify
from gls_core.training.checkpoint import save_model
from gls_core.training.estimators import Proposal
from gls_core.training.objective import Objective
from gls_core.training.points import evaluate_members
from services import codec
from services.client import CertifierClient
from services.proto.gls.v1 import bound_worker_pb2, certifier_pb2, common_pb2

WORKER_TOKEN = "fuzz-worker-token"
DEADLINE_S = 10.0
"""Per call. The stack's limits keep every valid computation far below it (verification: 1 s per input)."""
MAX_DETAILS = 1000
NOT_A_REQUEST = r"request: (the payload|message \d+) is not a valid gls\.v1\.{} \(protobuf parse error\)$"
"""Both services' answer (with INVALID_ARGUMENT) to a payload the method's request message cannot parse."""
RAW_SEEDS = 40
EXAMPLES = 20
EPS = 0.02
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
"""What the services answer a decodable, authenticated request: never INTERNAL, UNKNOWN or a timeout."""
ITEMS = 2
CALLS: Counter[str] = Counter()


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request: type[Message]
    streaming: bool = False

    @property
    def path(self) -> str:
        return f"/gls.v1.{self.service}/{self.name}"

    @property
    def worker(self) -> bool:
        return self.service == "BoundWorker"


RPCS = (Rpc("BoundWorker", "EvaluatePoints", bound_worker_pb2.PointsRequest),
        Rpc("BoundWorker", "Bounds", bound_worker_pb2.BoundsRequest),
        Rpc("BoundWorker", "Verify", bound_worker_pb2.VerifyRequest),
        Rpc("Certifier", "Certify", certifier_pb2.CertifyRequest),
        Rpc("Certifier", "CertifyStream", certifier_pb2.CertifyRequest, streaming=True))
IDS = [rpc.name for rpc in RPCS]


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str


@dataclass
class Env:
    stack: Stack
    model_id: str
    worker: grpc.Channel
    certifier: grpc.Channel
    bases: dict[str, list[Message]]
    changes: dict[str, list[list[tuple[Site, Change]]]] = dataclasses.field(default_factory=dict)
    """Per method and base request: every (field, change) of the sweep, the pool hypothesis draws from."""

    def __post_init__(self) -> None:
        self.changes = {name: [[(site, change) for site, holder in sites(base) for change in changes(site, holder)]
                               for base in bases] for name, bases in self.bases.items()}

    def channel(self, rpc: Rpc) -> grpc.Channel:
        return self.worker if rpc.worker else self.certifier

    def metadata(self, rpc: Rpc) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {WORKER_TOKEN if rpc.worker else ALICE}"),)


def call(channel: grpc.Channel, rpc: Rpc, payloads: Sequence[bytes],
         metadata: tuple[tuple[str, str], ...]) -> Answer:
    return call_path(channel, rpc.path, rpc.streaming, payloads, metadata, rpc.name)


def call_path(channel: grpc.Channel, path: str, streaming: bool, payloads: Sequence[bytes],
              metadata: tuple[tuple[str, str], ...], counted_as: str) -> Answer:
    """One call with raw bytes (no serializer: what goes out is exactly ``payloads``)."""
    CALLS[counted_as] += 1
    try:
        if streaming:
            method = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
            for _ in method(iter(payloads), metadata=metadata, timeout=DEADLINE_S):
                pass
        else:
            (payload,) = payloads
            channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
                payload, metadata=metadata, timeout=DEADLINE_S)
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "")
    return Answer(grpc.StatusCode.OK, "")


def undecodable_answer(rpc: Rpc, answer: Answer) -> bool:
    """The documented answer to an authenticated payload that does not parse: no incident, the field named."""
    expected = NOT_A_REQUEST.format(rpc.request.DESCRIPTOR.name)
    return answer.code == grpc.StatusCode.INVALID_ARGUMENT and re.match(expected, answer.details) is not None


def parses(rpc: Rpc, payload: bytes) -> bool:
    try:
        rpc.request.FromString(payload)
    except DecodeError:
        return False
    return True


# ------------------------------------------------------------------------------------------ the stack


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    stack = start_stack(tmp_path_factory.mktemp("redis"), workers=1, worker_token=WORKER_TOKEN,
                        verify_max_timeout_s=2.0, certify_complete_timeout_s=1.0,
                        certify_complete_max_timeout_s=2.0, certify_complete_max_inputs=8, certify_max_inputs=64,
                        rpc_timeout_s=DEADLINE_S)
    try:
        _, theta = digits_model()
        path = tmp_path_factory.mktemp("model") / "model.safetensors"
        save_model(path, theta, "fc-16", "digits")
        model_id = str(stack.client().upload_model(path)["id"])
        deadline = time.monotonic() + 30
        while not stack.gateway.gateway.pool.addresses():  # the worker's first heartbeat
            assert time.monotonic() < deadline, "the bound worker never registered"
            time.sleep(0.05)
        with grpc.insecure_channel(stack.workers[0].address) as worker, \
                grpc.insecure_channel(stack.gateway.certifier_address) as certifier:
            yield Env(stack, model_id, worker, certifier, base_requests(model_id))
    finally:
        print(f"\ngRPC fuzz calls per method: {dict(CALLS)}")
        stack.stop()


def _blob(tensor: torch.Tensor) -> bound_worker_pb2.Blob:
    return bound_worker_pb2.Blob(tensor=codec.tensor_to_proto(tensor))


def base_requests(model_id: str) -> dict[str, list[Message]]:
    """Valid requests of each method, small enough to compute in milliseconds; the fuzzing starts from these."""
    spec, theta = digits_model()
    x, y = digits_test(4)
    certified = bound_worker_pb2.Objective(kind=bound_worker_pb2.Objective.CERTIFIED,
                                           relaxation=common_pb2.Relaxation(method="ibp"))
    adversarial = bound_worker_pb2.Objective(kind=bound_worker_pb2.Objective.ADVERSARIAL, pgd_steps=2,
                                             pgd_step_size=0.25, pgd_restarts=1)
    points = []
    for objective, gradients in ((certified, False), (adversarial, True)):
        request = bound_worker_pb2.PointsRequest(
            centre=_blob(theta), sigma=_blob(torch.full_like(theta, 0.01)), seed=1, step=2, count=4,
            symmetric=True, start=0, stop=4, block=2, inputs=_blob(x), labels=_blob(y), eps=EPS,
            objective=objective, want_gradients=gradients)
        codec.spec_to_proto(spec, out=request.spec)
        points.append(request)
    alpha = bound_worker_pb2.BoundsRequest(params=_blob(theta), inputs=_blob(x), labels=_blob(y),
                                           perturbation=common_pb2.Perturbation(eps=EPS),
                                           relaxation=codec.relaxation_to_proto("alpha-crown", {"steps": 2}))
    radii = bound_worker_pb2.BoundsRequest(
        params=_blob(torch.stack([theta, theta])), inputs=_blob(x),
        perturbation=common_pb2.Perturbation(eps_per_input=codec.tensor_to_proto(torch.full((4,), EPS))),
        relaxation=common_pb2.Relaxation(method="deeppoly"))
    verify = bound_worker_pb2.VerifyRequest(params=_blob(theta), inputs=_blob(x[:1]), labels=_blob(y[:1]),
                                            perturbation=common_pb2.Perturbation(eps=0.01), timeout_seconds=1.0)
    for request in (alpha, radii, verify):
        codec.spec_to_proto(spec, out=request.spec)
    stored = CertifierClient.request(x, y, EPS, "ibp", model_id=model_id)
    inline = CertifierClient.request(x, y, EPS, "alpha-crown", inline=(spec, theta), options={"steps": 2})
    return {"EvaluatePoints": points, "Bounds": [alpha, radii], "Verify": [verify],
            "Certify": [stored, inline], "CertifyStream": [stored]}  # a stream decodes each message as Certify does


# ------------------------------------------------------------------------------ extremes of each field

LONG = "x" * 10_000
INT32 = (-2**31, -1, 0, 1, 2**31 - 1)
INT64 = (-2**63, -1, 0, 1, 2**40, 2**63 - 1)
UINT32 = (0, 1, 2**31, 2**32 - 1)
UINT64 = (0, 1, 2**63, 2**64 - 1)
DOUBLES = (math.nan, math.inf, -math.inf, -0.0, -1.0, 5e-324, 1e308)
FLOATS = (math.nan, math.inf, -math.inf, -0.0, -1.0, 1e-45, 3.4e38)
STRINGS = ("", LONG, "\x00", "é" * 3000, "alpha-crown", "complete", "complex64", "ab" * 32)
"""Empty, long, odd, and names that are valid somewhere (a method, a dtype-like name, a well-formed sha256)."""
BYTES = (b"", b"\x00", b"\xff" * 7, random.Random(0).randbytes(1 << 20))
_INTEGERS = {FieldDescriptor.CPPTYPE_INT32: INT32, FieldDescriptor.CPPTYPE_INT64: INT64,
             FieldDescriptor.CPPTYPE_UINT32: UINT32, FieldDescriptor.CPPTYPE_UINT64: UINT64,
             FieldDescriptor.CPPTYPE_DOUBLE: DOUBLES, FieldDescriptor.CPPTYPE_FLOAT: FLOATS,
             FieldDescriptor.CPPTYPE_BOOL: (True, False)}


@dataclass(frozen=True)
class Site:
    """A field of a request: the path to the message holding it (names and list indices) and its descriptor."""

    path: tuple[str | int, ...]
    field: FieldDescriptor

    def __str__(self) -> str:
        return ".".join(str(step) for step in (*self.path, self.field.name))


Change = tuple[str, Any]
"""(kind, argument): set a scalar, set a list, clear, set an empty message, set a tensor, repeat an item."""


def sites(message: Message, path: tuple[str | int, ...] = ()) -> Iterator[tuple[Site, Message]]:
    """Every field reachable from ``message``, with the message holding it (set or not).

    Of a list of messages (a spec's layers) the first ``ITEMS`` items are walked: each holds every kind."""
    for field in message.DESCRIPTOR.fields:
        yield Site(path, field), message
        if field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE or is_map(field):
            continue
        if field.is_repeated:
            for index, item in enumerate(getattr(message, field.name)[:ITEMS]):
                yield from sites(item, (*path, field.name, index))
        else:
            yield from sites(getattr(message, field.name), (*path, field.name))


def is_map(field: FieldDescriptor) -> bool:
    """A ``map<k, v>`` field (a kernel plan's choices): set as a whole, its entries are not walked."""
    return field.is_repeated and field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE and \
        field.message_type.GetOptions().map_entry


MAPS: list[dict[str, str]] = [{"": ""}, {"k" * 10_000: "v" * 10_000}, {f"key{index}": "x" for index in range(300)}]
"""Values of a string map: an empty key, 10,000-character ones, 300 entries."""


def scalar_pool(field: FieldDescriptor) -> tuple[Any, ...]:
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return (*(value.number for value in field.enum_type.values), 99, -1)
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return BYTES if field.type == FieldDescriptor.TYPE_BYTES else STRINGS
    return _INTEGERS[field.cpp_type]


def tensor_variants(current: common_pb2.Tensor) -> list[common_pb2.Tensor]:
    """Wrong dtypes, shapes, values and encodings of the tensor a field holds (or of a small float vector)."""
    base = codec.tensor_from_proto(current) if current.dtype else torch.rand(4)
    flat = base.reshape(-1)
    wrong: list[torch.Tensor] = [base.to(dtype) for dtype in (torch.float32, torch.float64, torch.int64,
                                                             torch.uint8, torch.bool) if dtype != base.dtype]
    wrong += [flat.unsqueeze(0), base.unsqueeze(-1), flat[:1], flat[:0], flat[0]]
    for value in (math.nan, math.inf, -1.0, 2.0):
        changed = base.double()
        changed.view(-1)[0] = value
        wrong.append(changed.to(base.dtype) if base.is_floating_point() else changed)
    wrong += [-base.to(torch.int64) - 1]
    messages = [codec.tensor_to_proto(tensor) for tensor in wrong]
    data = codec.tensor_to_proto(base).data
    shape = list(base.shape)
    messages += [
        common_pb2.Tensor(dtype="complex64", shape=shape, data=data),
        common_pb2.Tensor(dtype=LONG, shape=shape, data=data),
        common_pb2.Tensor(dtype="float32", shape=[-1], data=b""),
        common_pb2.Tensor(dtype="float32", shape=[2**62, 2**62], data=b""),
        common_pb2.Tensor(dtype="float32", shape=[1] * 9, data=b"\0" * 4),
        common_pb2.Tensor(dtype="float32", shape=[1 << 18], data=BYTES[-1]),  # 1 MiB of random floats
        common_pb2.Tensor(dtype=current.dtype or "float32", shape=shape, data=data[:-1]),
        common_pb2.Tensor(dtype="bool", shape=[4], data=b"\0\1\2\3"),
    ]
    return messages


def changes(site: Site, holder: Message) -> list[Change]:
    field = site.field
    if is_map(field):
        return [("clear", None), *(("map", entries) for entries in MAPS)]
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        if field.is_repeated:
            return [("clear", None), ("blank", None), ("many", 300)]
        options: list[Change] = [("clear", None), ("empty", None)]
        if field.message_type.full_name == "gls.v1.Tensor":
            options += [("tensor", tensor) for tensor in tensor_variants(getattr(holder, field.name))]
        return options
    pool = scalar_pool(field)
    if field.is_repeated:
        lists = [[], [pool[0]], [pool[-1]], [pool[0], pool[-1], pool[1]], [pool[-1]] * 10_000]
        return [("list", values) for values in lists]
    return [("set", value) for value in pool]


def apply(message: Message, site: Site, change: Change) -> bool:
    """Make the change in place; False when an earlier change removed the item the site lies in."""
    holder: Any = message
    for step in site.path:
        if isinstance(step, int):
            if step >= len(holder):
                return False
            holder = holder[step]
        else:
            holder = getattr(holder, step)
    name = site.field.name
    kind, argument = change
    if kind == "clear":
        holder.ClearField(name)
    elif kind == "set":
        setattr(holder, name, argument)
    elif kind == "list":
        del getattr(holder, name)[:]
        getattr(holder, name).extend(argument)
    elif kind == "empty":
        holder.ClearField(name)
        getattr(holder, name).SetInParent()
    elif kind == "tensor":
        getattr(holder, name).CopyFrom(argument)
    elif kind == "map":
        getattr(holder, name).clear()
        getattr(holder, name).update(argument)
    elif kind == "blank":
        getattr(holder, name).add()
    else:  # many: repeat the first item (or an empty one) up to the count
        items = getattr(holder, name)
        template = items[0] if len(items) else None
        while len(items) < argument:
            added = items.add()
            if template is not None:
                added.CopyFrom(template)
    return True


def describe(change: Change) -> str:
    text = " ".join(repr(change[1]).split())
    return f"{change[0]} {text[:60]}{'...' if len(text) > 60 else ''}"


# ------------------------------------------------------------------------------------------- checks


def judge(answer: Answer, what: Callable[[], str]) -> list[str]:
    """The problems with the answer to a decodable, authenticated request (none: an empty list).

    ``what`` describes the request; it is called only for a problem (describing a 1 MiB field costs)."""
    problems = []
    if answer.code not in ALLOWED:
        problems.append(f"{what()}: {answer.code.name} {answer.details[:300]!r}")
    if len(answer.details) > MAX_DETAILS:
        problems.append(f"{what()}: details of {len(answer.details)} characters")
    return problems


def send_message(env: Env, rpc: Rpc, base: Message, message: Message, after_valid: bool) -> Answer:
    payloads = [message.SerializeToString()]
    if rpc.streaming and after_valid:  # the later message of a stream: judged against the first one
        payloads.insert(0, base.SerializeToString())
    return call(env.channel(rpc), rpc, payloads, env.metadata(rpc))


def assert_still_serving(env: Env) -> None:
    """Both servers SERVING, no computation left behind, and each method right on a valid request."""
    for channel, service in ((env.worker, "gls.v1.BoundWorker"), (env.certifier, "gls.v1.Certifier")):
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=DEADLINE_S)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    worker = env.stack.workers[0].service
    deadline = time.monotonic() + 30
    while worker.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.in_flight == 0, "a fuzzed request is still computing on the worker"
    spec, theta = digits_model()
    x, y = digits_test(4)
    metadata = (("authorization", f"Bearer {WORKER_TOKEN}"),)
    points = bound_worker_pb2.PointsResponse.FromString(env.worker.unary_unary(
        "/gls.v1.BoundWorker/EvaluatePoints", request_serializer=None, response_deserializer=None)(
        env.bases["EvaluatePoints"][0].SerializeToString(), metadata=metadata, timeout=DEADLINE_S))
    proposal = Proposal(step=2, seed=1, centre=theta, sigma=torch.full_like(theta, 0.01), count=4, symmetric=True,
                        needs_grads=False)
    expected = evaluate_members(spec, proposal, Objective("certified", "ibp"), x, y, EPS, 1, 2)
    assert torch.equal(codec.tensor_from_proto(points.losses), expected.losses)
    bounds = bound_worker_pb2.BoundsResponse.FromString(env.worker.unary_unary(
        "/gls.v1.BoundWorker/Bounds", request_serializer=None, response_deserializer=None)(
        env.bases["Bounds"][0].SerializeToString(), metadata=metadata, timeout=DEADLINE_S))
    with torch.no_grad():
        _, upper = compute_bounds(spec, x, EPS, "alpha-crown", C=margin_spec(y, 10), params=theta, sides="upper",
                                  steps=2)
    assert torch.equal(codec.tensor_from_proto(bounds.upper), upper)
    verified = bound_worker_pb2.VerifyResponse.FromString(env.worker.unary_unary(
        "/gls.v1.BoundWorker/Verify", request_serializer=None, response_deserializer=None)(
        env.bases["Verify"][0].SerializeToString(), metadata=metadata, timeout=DEADLINE_S))
    assert len(verified.verdicts) == 1 and {v.status for v in verified.verdicts} <= {"verified", "falsified",
                                                                                      "unknown"}
    expected_certified = certify(spec, theta, x, y, EPS, "ibp").tolist()
    with CertifierClient(env.stack.gateway.certifier_address, ALICE, timeout=DEADLINE_S) as client:
        unary = client.certify(x, y, EPS, "ibp", model_id=env.model_id)
        streamed = list(client.certify_stream(x, y, EPS, "ibp", model_id=env.model_id, chunk_size=3))
    assert [v["certified"] for v in unary["verdicts"]] == expected_certified
    assert [v["certified"] for v in streamed] == expected_certified
    assert [v["index"] for v in streamed] == list(range(4))


# -------------------------------------------------------------------------------------------- tests


def raw_payload(seed: int, valid: bytes) -> bytes:
    """Random bytes (seed % 3 == 0), or the valid encoding with bytes overwritten, or truncated and extended."""
    rng = random.Random(seed)
    if seed % 3 == 0:
        return rng.randbytes(rng.randint(0, 300))
    data = bytearray(valid)
    if seed % 3 == 1:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return bytes(data[:rng.randrange(len(data))]) + rng.randbytes(rng.randint(0, 40))


@pytest.mark.parametrize("rpc", RPCS, ids=IDS)
def test_random_bytes_get_grpcs_parse_error_or_a_documented_code(env: Env, rpc: Rpc) -> None:
    bases = env.bases[rpc.name]
    problems: list[str] = []
    undecodable = 0
    for seed in range(RAW_SEEDS):
        valid = bases[seed % len(bases)].SerializeToString()
        payload = raw_payload(seed, valid)
        payloads = [valid, payload] if rpc.streaming and seed % 2 else [payload]
        answer = call(env.channel(rpc), rpc, payloads, env.metadata(rpc))
        what = f"seed {seed} ({len(payload)} bytes)"
        if parses(rpc, payload):
            problems += judge(answer, lambda what=what: what)  # type: ignore[misc]
        else:
            undecodable += 1
            if not undecodable_answer(rpc, answer):
                problems.append(f"{what}, undecodable: {answer.code.name} {answer.details[:300]!r}")
    empty = call(env.channel(rpc), rpc, [b""], env.metadata(rpc))  # decodes to a request with nothing set
    if empty.code != grpc.StatusCode.INVALID_ARGUMENT:
        problems.append(f"empty payload: {empty.code.name} {empty.details!r}")
    assert not problems, "\n".join(problems)
    assert 0 < undecodable < RAW_SEEDS  # both kinds occurred
    assert_still_serving(env)


@pytest.mark.parametrize("rpc", RPCS, ids=IDS)
def test_every_field_at_each_of_its_extremes(env: Env, rpc: Rpc) -> None:
    problems: list[str] = []
    count = 0
    for number, (base, sweep) in enumerate(zip(env.bases[rpc.name], env.changes[rpc.name])):
        for site, change in sweep:
            message = rpc.request()
            message.CopyFrom(base)
            apply(message, site, change)
            answer = send_message(env, rpc, base, message, after_valid=bool(count % 2))
            count += 1
            problems += judge(answer, lambda: f"base {number}, {site} = {describe(change)}")  # noqa: B023 (called at once)
    assert not problems, f"{len(problems)} of {count} calls:\n" + "\n".join(problems[:40])
    assert_still_serving(env)


@pytest.mark.parametrize("rpc", RPCS, ids=IDS)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_combined_extremes(env: Env, rpc: Rpc, data: st.DataObject) -> None:
    bases = env.bases[rpc.name]
    number = data.draw(st.integers(0, len(bases) - 1), label="base")
    base, choices = bases[number], env.changes[rpc.name][number]
    message = rpc.request()
    message.CopyFrom(base)
    made = []
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        site, change = data.draw(st.sampled_from(choices), label="change")
        if apply(message, site, change):
            made.append(f"{site} = {describe(change)}")
    answer = send_message(env, rpc, base, message, after_valid=data.draw(st.booleans(), label="after valid"))
    problems = judge(answer, lambda: "; ".join(made))
    assert not problems, problems


def test_servers_still_serve_after_the_combined_extremes(env: Env) -> None:
    assert_still_serving(env)


@pytest.mark.parametrize("rpc", RPCS, ids=IDS)
def test_without_or_with_a_wrong_token_every_call_is_unauthenticated(env: Env, rpc: Rpc) -> None:
    """Both refuse before decoding: the worker in an interceptor, the Certifier in the method, before it parses
    the raw payload (so an undecodable one without a token is UNAUTHENTICATED too)."""
    base = env.bases[rpc.name][0]
    payloads = [base.SerializeToString(), b"", *(raw_payload(seed, base.SerializeToString()) for seed in range(6))]
    problems = []
    for metadata in ((), (("authorization", "Bearer wrong-token"),), (("authorization", "Bearer " + "x" * 4000),),
                     (("authorization", LONG),)):
        for payload in payloads:
            answer = call(env.channel(rpc), rpc, [payload], metadata)
            expected = {grpc.StatusCode.UNAUTHENTICATED}
            if len(metadata[0][1]) > 8192 if metadata else False:  # over grpc's metadata soft limit: it may refuse
                expected.add(grpc.StatusCode.RESOURCE_EXHAUSTED)
            if answer.code not in expected or len(answer.details) > MAX_DETAILS:
                problems.append(f"{metadata!r:.40} {len(payload)} bytes: {answer.code.name} {answer.details[:200]!r}")
    assert not problems, "\n".join(problems)
    assert_still_serving(env)


def test_unknown_methods_are_unimplemented(env: Env) -> None:
    problems = []
    for channel, metadata, protected in ((env.worker, (("authorization", f"Bearer {WORKER_TOKEN}"),), False),
                                         (env.worker, (), True),
                                         (env.certifier, (("authorization", f"Bearer {ALICE}"),), False),
                                         (env.certifier, (), False)):
        for path in ("/gls.v1.BoundWorker/Nope", "/gls.v1.Certifier/Nope", "/gls.v1.Nope/Certify",
                     "/gls.v1.BoundWorker/" + "x" * 1000, "/nope", "/gls.v1.Certifier/certify"):
            answer = call_path(channel, path, False, [b""], metadata, "unknown methods")
            # a worker refuses anything under its service's name without the token, before looking the method up
            expected = grpc.StatusCode.UNAUTHENTICATED if protected and path.startswith("/gls.v1.BoundWorker/") \
                else grpc.StatusCode.UNIMPLEMENTED
            if answer.code != expected or len(answer.details) > MAX_DETAILS:
                problems.append(f"{path[:60]}: {answer.code.name} {answer.details[:200]!r}")
    assert not problems, "\n".join(problems)
    assert_still_serving(env)


@pytest.mark.parametrize("rpc", RPCS, ids=IDS)
def test_a_long_network_name_is_not_echoed_by_later_errors(env: Env, rpc: Rpc) -> None:
    """Errors about inputs and parameters name the network: a 10,000-character name with a bad field must not
    come back (the sweep changes one field at a time, so it pairs the name with a valid request only)."""
    message = rpc.request()
    message.CopyFrom(env.bases[rpc.name][-1])
    spec = message.inline.spec if not rpc.worker else message.spec  # type: ignore[attr-defined]
    spec.name = LONG
    wrong = codec.tensor_to_proto(torch.zeros(4, 1, 7, 7))
    (message.inputs if not rpc.worker else message.inputs.tensor).CopyFrom(wrong)  # type: ignore[attr-defined]
    answer = send_message(env, rpc, env.bases[rpc.name][-1], message, after_valid=False)
    name = "spec.name" if rpc.worker else "inline.spec.name"  # the Certifier's spec is nested in inline
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT and f"{name}: has 10000 characters" in answer.details
    assert len(answer.details) < 200
