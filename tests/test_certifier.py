"""Certification through the gateway: REST, gRPC Certify and CertifyStream against in-process gls_core.

Two real bound workers share every request (the pool splits the inputs), so the agreement checks
also cover the fan-out. The model is a small fc-16 trained on digits; eps is chosen so that some
inputs are certified and some are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_gateway_support import (
    ALICE,
    BOB,
    Stack,
    digits_model,
    digits_test,
    serve_worker,
    start_stack,
    upload_digits_model,
)

from gls_core.bounds.api import compute_bounds, margin_spec
from gls_core.evaluation import bound_options, certify
from services.client import CertifierClient, ClientError, verdict_dict
from services.codec import spec_to_proto, tensor_to_proto
from services.proto.gls.v1 import certifier_pb2
from services.rich_status import error_info, field_violations

EPS = 0.02
N = 60
METHODS = ("ibp", "deeppoly", "alpha-crown")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=2, certify_max_inputs=100)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def model_id(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_digits_model(stack, tmp_path_factory.mktemp("model"))


def assert_same_verdicts(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Identical decisions and indices; margins equal up to float32 rounding."""
    decisions = ("index", "predicted", "correct", "certified")
    assert [[v[key] for key in decisions] for v in got] == [[v[key] for key in decisions] for v in expected]
    torch.testing.assert_close(torch.tensor([v["margin_upper"] for v in got]),
                               torch.tensor([v["margin_upper"] for v in expected]), rtol=1e-5, atol=1e-5)


def inline() -> dict[str, Any]:
    _, theta = digits_model()
    return {"arch": "fc-16", "dataset": "digits", "theta": theta}


@pytest.mark.parametrize("method", METHODS)
def test_rest_grpc_and_in_process_certification_agree(stack: Stack, model_id: str, method: str) -> None:
    spec, theta = digits_model()
    x, y = digits_test(N)
    expected = certify(spec, theta, x, y, EPS, method)
    assert 0 < int(expected.sum()) < N  # a meaningful comparison: both verdicts occur
    with torch.no_grad():
        _, upper = compute_bounds(spec, x, EPS, method, C=margin_spec(y, 10), params=theta, **bound_options(method))

    rest = stack.client().certify(x, y, EPS, method, model_id=model_id)
    rest_inline = stack.client().certify(x, y, EPS, method, model=inline())
    with stack.certifier() as client:
        unary = client.certify(x, y, EPS, method, model_id=model_id)
        unary_inline = client.certify(x, y, EPS, method, inline=(spec, theta))
        streamed = list(client.certify_stream(x, y, EPS, method, model_id=model_id, chunk_size=16))

    assert [v["certified"] for v in rest["verdicts"]] == expected.tolist()
    assert (rest["certified"], rest["total"], rest["method"], rest["eps"]) == (int(expected.sum()), N, method, EPS)
    # the same request is split the same way across the workers: the same float32 numbers, bit for bit
    assert rest["verdicts"] == rest_inline["verdicts"] == unary["verdicts"] == unary_inline["verdicts"]
    assert (unary["certified"], unary["total"], unary["method"]) == (rest["certified"], N, method)
    # other batch compositions (in process, 16-input stream chunks) may round the last bit differently
    assert_same_verdicts(streamed, rest["verdicts"])
    margins = torch.tensor([v["margin_upper"] for v in rest["verdicts"]])
    torch.testing.assert_close(margins, upper, rtol=1e-5, atol=1e-5)
    for verdict, label, row in zip(rest["verdicts"], y.tolist(), upper):
        assert verdict["worst_margin"] == float(row.max())
        assert verdict["correct"] == (verdict["predicted"] == label) or not verdict["correct"]
        assert not verdict["certified"] or verdict["correct"]


def test_options_and_per_input_radii(stack: Stack, model_id: str) -> None:
    spec, theta = digits_model()
    x, y = digits_test(N)
    options = {"steps": 3, "step_size": 0.2, "init": 0.5}
    rest = stack.client().certify(x, y, EPS, "alpha-crown", model_id=model_id, options=options)
    expected = certify(spec, theta, x, y, EPS, "alpha-crown", alpha_steps=3)  # evaluation's step 0.1, DeepPoly init
    with torch.no_grad():
        _, upper = compute_bounds(spec, x, EPS, "alpha-crown", C=margin_spec(y, 10), params=theta, **options)
    torch.testing.assert_close(torch.tensor([v["margin_upper"] for v in rest["verdicts"]]), upper, rtol=1e-5,
                               atol=1e-5)
    assert rest["certified"] <= N and len(expected) == N

    radii = torch.linspace(0, 0.05, N)
    request = CertifierClient.request(x, y, 0.0, "deeppoly", model_id=model_id)
    tensor_to_proto(radii, out=request.perturbation.eps_per_input)
    channel = grpc.insecure_channel(stack.gateway.certifier_address)
    answer = channel.unary_unary("/gls.v1.Certifier/Certify",
                                 request_serializer=certifier_pb2.CertifyRequest.SerializeToString,
                                 response_deserializer=certifier_pb2.CertifyResponse.FromString)(
        request, metadata=(("authorization", f"Bearer {ALICE}"),))
    with torch.no_grad():
        _, per_input = compute_bounds(spec, x, radii, "deeppoly", C=margin_spec(y, 10), params=theta)
    torch.testing.assert_close(torch.tensor([list(v.margin_upper) for v in answer.verdicts]), per_input, rtol=1e-5,
                               atol=1e-5)
    channel.close()


def test_stream_orders_verdicts_across_chunks(stack: Stack, model_id: str) -> None:
    x, y = digits_test(N)
    reference = stack.client().certify(x, y, EPS, "deeppoly", model_id=model_id)["verdicts"]
    with stack.certifier() as client:
        verdicts = list(client.certify_stream(x, y, EPS, "deeppoly", model_id=model_id, chunk_size=7))
        assert [v["index"] for v in verdicts] == list(range(N))
        assert_same_verdicts(verdicts, reference)

        # a first message that only names the model; later ones switch the relaxation for themselves
        def messages() -> Iterator[certifier_pb2.CertifyRequest]:
            yield CertifierClient.request(None, None, EPS, "deeppoly", model_id=model_id)
            yield CertifierClient.request(x[:30], y[:30], None, None)
            yield CertifierClient.request(x[30:], y[30:], EPS, "ibp", model_id=model_id)

        mixed = [v for v in client._stream(messages(), metadata=client.metadata)]
    ibp = stack.client().certify(x[30:], y[30:], EPS, "ibp", model_id=model_id)["verdicts"]
    assert [v.index for v in mixed] == list(range(N))
    as_dicts = [verdict_dict(v) for v in mixed]
    assert_same_verdicts(as_dicts[:30], reference[:30])
    assert_same_verdicts([{**v, "index": v["index"] - 30} for v in as_dicts[30:]], ibp)


def rest_error(stack: Stack, body: dict[str, Any] | bytes) -> tuple[int, dict[str, str]]:
    alice = stack.http(ALICE)
    response = alice.post("/v1/certify", content=body, headers={"Content-Type": "application/json"}) \
        if isinstance(body, bytes) else alice.post("/v1/certify", json=body)
    detail = response.json()["detail"]
    return response.status_code, ({item["field"]: item["msg"] for item in detail} if isinstance(detail, list)
                                   else {"": detail})


def test_malformed_rest_requests_get_4xx_naming_the_field(stack: Stack, model_id: str) -> None:
    x, y = digits_test(4)
    good: dict[str, Any] = {"model_id": model_id, "inputs": x.tolist(), "labels": y.tolist(), "eps": EPS}
    _, theta = digits_model()
    cases: list[tuple[dict[str, Any] | bytes, int, str, str]] = [
        ({**good, "inputs": torch.rand(4, 1, 28, 28).tolist()}, 422, "inputs", "shape [B, 1, 8, 8]"),
        ({**good, "inputs": [x[0].tolist(), [[[0.5]]]]}, 422, "inputs", "ragged"),
        ({**good, "inputs": (x * 2).tolist()}, 422, "inputs", "[0, 1]"),
        ({**good, "inputs": []}, 422, "inputs", "no inputs"),
        ({**good, "inputs": "pixels"}, 422, "inputs", "valid list"),
        ({**good, "inputs": torch.rand(101, 1, 8, 8).tolist(), "labels": [0] * 101}, 413, "inputs", "limit of 100"),
        ({**good, "labels": [0, 1, 2, 10]}, 422, "labels.3", "not a class"),
        ({**good, "labels": [0, 1]}, 422, "labels", "one label per input"),
        ({**good, "labels": [0.5, 1, 2, 3]}, 422, "labels.0", "integer"),
        ({**good, "eps": -0.1}, 422, "eps", "greater than or equal to 0"),
        ({**good, "eps": "big"}, 422, "eps", "number"),
        ({**good, "eps": "0.1"}, 422, "eps", "number"),  # no string coercion
        ({**good, "eps": True}, 422, "eps", "number"),  # nor booleans
        ({**good, "relaxation": "zonotope"}, 422, "relaxation.method", "unknown relaxation"),
        ({**good, "relaxation": {"method": "deeppoly", "steps": 3}}, 422, "relaxation", "only apply to alpha-crown"),
        ({**good, "relaxation": {"method": "alpha-crown", "init": 2}}, 422, "relaxation.init", ""),
        ({**good, "relaxation": {"method": "alpha-crown", "tricks": 1}}, 422, "relaxation.tricks", "unknown field"),
        ({**good, "relaxation": {"method": "alpha-crown", "steps": 0, "step_size": 0, "init": 0}}, 422, "relaxation",
         "cannot be sent"),
        ({**good, "colour": "red"}, 422, "colour", "unknown field"),
        ({**good, "model": {"arch": "fc-16", "dataset": "digits", "theta": [0.0]}}, 422, "model_id", "exactly one"),
        ({key: value for key, value in good.items() if key != "model_id"}, 422, "model_id", "exactly one"),
        ({**good, "model_id": None, "model": {"arch": "fc-16", "dataset": "digits", "theta": [0.0]}}, 422,
         "model.theta", "parameters"),
        ({**good, "model_id": None, "model": {"arch": "vit", "dataset": "digits", "theta": [0.0]}}, 422,
         "model.arch", "unknown architecture"),
        ({**good, "model_id": None, "model": {"arch": "fc-x", "dataset": "digits", "theta": [0.0]}}, 422,
         "model.arch", "unknown architecture"),
        ({**good, "model_id": None, "model": {"arch": "fc-16", "dataset": "svhn", "theta": [0.0]}}, 422,
         "model.dataset", "unknown dataset"),
        (b'{"model_id": "%s", "inputs": [[[[NaN]]]], "labels": [0], "eps": 0.1}' % model_id.encode(), 422,
         "inputs.0.0.0.0", "finite"),
        (b'{"model_id": "x", "eps": Infinity}', 422, "eps", "finite"),
        (b'{"model_id": ', 422, "body", "malformed JSON"),
        (b'[1, 2]', 422, "body", "valid dictionary"),
        ({**good, "model_id": "model-0000000000000000"}, 404, "", "not found"),
    ]
    for body, status, field, reason in cases:
        code, errors = rest_error(stack, body)
        assert code == status, (field, errors)
        assert field in errors and reason in errors[field], (field, errors)
    stored = stack.store().put_model("bob", b"", "fc-16", "digits", theta.numel())
    assert rest_error(stack, {**good, "model_id": stored.id}) == (404, {"": f"model {stored.id!r} not found"})
    assert stack.http(ALICE).post("/v1/certify", json=good).status_code == 200  # still serving


def grpc_code(client: CertifierClient, request: certifier_pb2.CertifyRequest,
              metadata: tuple[tuple[str, str], ...] | None = None) -> tuple[str, str]:
    """(code, details); also checks that the answer carries its reason (and, if a field is bad, which one)."""
    try:
        client._certify(request, metadata=client.metadata if metadata is None else metadata, timeout=60)
    except grpc.RpcError as error:
        details = error.details() or ""
        info = error_info(error)
        assert info is not None, f"{error.code().name} {details}: no ErrorInfo"
        expected_reason = {"INVALID_ARGUMENT": "INVALID_REQUEST", "UNAUTHENTICATED": "UNAUTHENTICATED",
                           "NOT_FOUND": "NOT_FOUND"}.get(error.code().name)
        assert expected_reason is None or info[0] == expected_reason, (error.code().name, info)
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:  # clients read the field, not the message
            violations = field_violations(error)
            assert violations and details.startswith(f"{violations[0][0]}: {violations[0][1][:20]}"), violations
        return error.code().name, details
    return "OK", ""


def test_malformed_grpc_requests_get_invalid_argument(stack: Stack, model_id: str) -> None:
    spec, theta = digits_model()
    x, y = digits_test(4)

    def request(**changes: Any) -> certifier_pb2.CertifyRequest:
        message = CertifierClient.request(x, y, EPS, "deeppoly", model_id=model_id)
        for name, value in changes.items():
            value(message) if callable(value) else setattr(message, name, value)
        return message

    def bad_dtype(message: certifier_pb2.CertifyRequest) -> None:
        message.inputs.dtype = "complex64"

    def short_data(message: certifier_pb2.CertifyRequest) -> None:
        message.inputs.data = message.inputs.data[:-4]

    def wrong_shape(message: certifier_pb2.CertifyRequest) -> None:
        tensor_to_proto(torch.rand(4, 1, 28, 28), out=message.inputs)

    def out_of_range(message: certifier_pb2.CertifyRequest) -> None:
        tensor_to_proto(torch.tensor([0, 1, 2, 12]), out=message.labels)

    def float_labels(message: certifier_pb2.CertifyRequest) -> None:
        tensor_to_proto(torch.zeros(4), out=message.labels)

    def nan_eps(message: certifier_pb2.CertifyRequest) -> None:
        message.perturbation.eps = float("nan")

    def no_model(message: certifier_pb2.CertifyRequest) -> None:
        message.ClearField("model_id")

    def bad_spec(message: certifier_pb2.CertifyRequest) -> None:
        spec_to_proto(spec, out=message.inline.spec)
        message.inline.spec.layers[1].linear.in_features = 63
        tensor_to_proto(theta, out=message.inline.theta)

    def short_theta(message: certifier_pb2.CertifyRequest) -> None:
        spec_to_proto(spec, out=message.inline.spec)
        tensor_to_proto(theta[:-1], out=message.inline.theta)

    def pixels(message: certifier_pb2.CertifyRequest) -> None:
        tensor_to_proto(x * 3, out=message.inputs)

    def alpha_init(message: certifier_pb2.CertifyRequest) -> None:
        message.relaxation.method = "alpha-crown"
        message.relaxation.alpha_init = 3.0

    def long_name(message: certifier_pb2.CertifyRequest) -> None:
        spec_to_proto(spec, out=message.inline.spec)
        message.inline.spec.name = "n" * 300
        tensor_to_proto(theta, out=message.inline.theta)

    def empty_layer(message: certifier_pb2.CertifyRequest) -> None:
        spec_to_proto(spec, out=message.inline.spec)
        message.inline.spec.layers[1].linear.out_features = 0
        tensor_to_proto(theta, out=message.inline.theta)

    cases = [(bad_dtype, "inputs.dtype: 'complex64'"), (short_data, "inputs.data: has 1020 bytes"),
             (wrong_shape, "inputs: must have shape [B, 1, 8, 8] for fc-16-digits"),
             (out_of_range, "labels.3: label 12"), (float_labels, "labels.dtype"), (nan_eps, "perturbation.eps"),
             (no_model, "model: set model_id"), (bad_spec, "inline.spec: layer 1: Linear expects"),
             (short_theta, "inline.theta: must have shape"), (pixels, "inputs: must lie in [0, 1]"),
             (alpha_init, "relaxation.alpha_init"),
             # a nested message's errors name the whole path, not the outer field
             (long_name, "inline.spec.name: has 300 characters"),
             (empty_layer, "inline.spec.layers[1]: Linear needs positive features")]
    with stack.certifier() as client:
        for change, expected in cases:
            code, details = grpc_code(client, request(change=change))
            assert code == "INVALID_ARGUMENT" and details.startswith(expected), (expected, details)
        unknown = request()
        unknown.relaxation.method = "zonotope"
        assert grpc_code(client, unknown)[1].startswith("relaxation.method")
        unknown.relaxation.method = "z" * 10_000  # the error quotes it cut short, so it fits gRPC's metadata
        code, details = grpc_code(client, unknown)
        assert code == "INVALID_ARGUMENT" and "(10000 characters)" in details and len(details) < 400
        negative = request()
        negative.perturbation.eps = -1
        assert grpc_code(client, negative) == ("INVALID_ARGUMENT", "perturbation.eps: must be finite and >= 0, "
                                                                   "got -1.0")
        too_many = CertifierClient.request(torch.rand(101, 1, 8, 8), torch.zeros(101), EPS, "ibp", model_id=model_id)
        assert "limit of 100" in grpc_code(client, too_many)[1]

        assert grpc_code(client, request(), metadata=())[0] == "UNAUTHENTICATED"
        assert grpc_code(client, request(), metadata=(("authorization", "Bearer nope"),))[0] == "UNAUTHENTICATED"
        theirs = stack.store().put_model("bob", b"", "fc-16", "digits", theta.numel())
        assert grpc_code(client, request(model_id=theirs.id)) == ("NOT_FOUND", f"model {theirs.id!r} not found")
        assert grpc_code(client, request(model_id="model-missing"))[0] == "NOT_FOUND"
        with pytest.raises(ClientError) as error:
            list(client.certify_stream(x, y, EPS, "ibp", model_id=theirs.id))
        assert error.value.status == "NOT_FOUND"
        with pytest.raises(ClientError) as error:
            list(CertifierClient(stack.gateway.certifier_address, BOB).certify_stream(x, y, EPS, model_id=model_id))
        assert error.value.status == "NOT_FOUND"
        assert grpc_code(client, request()) == ("OK", "")  # still serving


def test_stream_refuses_a_second_model_mid_stream(stack: Stack, model_id: str) -> None:
    x, y = digits_test(8)
    spec, theta = digits_model()
    with stack.certifier() as client:
        messages = [CertifierClient.request(x[:4], y[:4], EPS, "ibp", model_id=model_id),
                    CertifierClient.request(x[4:], y[4:], None, None, inline=(spec, theta))]
        received = []
        with pytest.raises(grpc.RpcError) as error:
            for verdict in client._stream(iter(messages), metadata=client.metadata):
                received.append(verdict.index)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "message 1" in error.value.details()
        assert received == [0, 1, 2, 3]  # what was certified before the bad message arrived


def grpc_count(stack: Stack, method: str, code: str) -> float:
    """The gateway's gls_gateway_grpc_requests_total for (method, code), 0 before the first such call."""
    prefix = f'gls_gateway_grpc_requests_total{{code="{code}",method="{method}"}} '
    lines = [line for line in stack.http(None).get("/metrics").text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def test_the_token_is_checked_before_the_payload_is_parsed(stack: Stack, model_id: str) -> None:
    """An undecodable payload without a token is UNAUTHENTICATED (not grpcio's INTERNAL parse error); with one, it is
    INVALID_ARGUMENT naming ``request``, counted as such, in a stream too (not as OK)."""
    garbage = b"\xff\xff\xff"
    with pytest.raises(DecodeError):
        certifier_pb2.CertifyRequest.FromString(garbage)
    x, y = digits_test(4)
    valid = CertifierClient.request(x, y, EPS, "ibp", model_id=model_id).SerializeToString()
    token = (("authorization", f"Bearer {ALICE}"),)
    with grpc.insecure_channel(stack.gateway.certifier_address) as channel:
        unary = channel.unary_unary("/gls.v1.Certifier/Certify", request_serializer=None, response_deserializer=None)
        stream = channel.stream_stream("/gls.v1.Certifier/CertifyStream", request_serializer=None,
                                       response_deserializer=None)
        for metadata in ((), (("authorization", "Bearer nope"),)):
            with pytest.raises(grpc.RpcError) as refused:
                unary(garbage, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
        with pytest.raises(grpc.RpcError) as unparsed:
            unary(garbage, metadata=token, timeout=30)
        assert unparsed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in field_violations(unparsed.value)] == ["request"]
        assert "the payload is not a valid gls.v1.CertifyRequest" in (unparsed.value.details() or "")

        before = {code: grpc_count(stack, "CertifyStream", code) for code in ("OK", "INVALID_ARGUMENT")}
        received = []
        with pytest.raises(grpc.RpcError) as bad_message:
            for answer in stream(iter([valid, garbage]), metadata=token, timeout=60):
                received.append(certifier_pb2.Verdict.FromString(answer).index)
        assert bad_message.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request: message 1 is not a valid gls.v1.CertifyRequest" in (bad_message.value.details() or "")
        assert received == [0, 1, 2, 3]
    assert grpc_count(stack, "CertifyStream", "INVALID_ARGUMENT") == before["INVALID_ARGUMENT"] + 1
    assert grpc_count(stack, "CertifyStream", "OK") == before["OK"]


def test_health_reflection_and_metrics(stack: Stack, model_id: str) -> None:
    channel = grpc.insecure_channel(stack.gateway.certifier_address)
    check = health_pb2_grpc.HealthStub(channel).Check
    for service in ("", "gls.v1.Certifier"):
        assert check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    answer = next(reflection(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "gls.v1.Certifier" in [service.name for service in answer.list_services_response.service]
    channel.close()

    x, y = digits_test(5)
    stack.client().certify(x, y, EPS, "ibp", model_id=model_id)
    with stack.certifier() as client:
        client.certify(x, y, EPS, "ibp", model_id=model_id)
    text = stack.http(None).get("/metrics").text
    assert 'gls_gateway_certify_inputs_total{api="rest",method="ibp"}' in text
    assert 'gls_gateway_certify_inputs_total{api="grpc",method="ibp"}' in text
    assert 'gls_gateway_grpc_requests_total{code="OK",method="Certify"}' in text
    assert 'gls_gateway_grpc_requests_total{code="INVALID_ARGUMENT",method="Certify"}' in text
    assert "gls_gateway_live_workers 2.0" in text
    assert stack.http(None).get("/readyz").json()["workers"] == 2


def test_without_workers_certification_is_unavailable(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, workers=0)
    try:
        x, y = digits_test(3)
        model = {**inline(), "theta": inline()["theta"].tolist()}
        response = stack.http(ALICE).post("/v1/certify", json={"model": model, "inputs": x.tolist(),
                                                               "labels": y.tolist(), "eps": 0.1})
        assert response.status_code == 503 and "no bound worker is live" in response.json()["detail"]
        spec, theta = digits_model()
        with stack.certifier() as client, pytest.raises(ClientError) as error:
            client.certify(x, y, 0.1, inline=(spec, theta))
        assert error.value.status == "UNAVAILABLE" and "no bound worker" in str(error.value)
        assert stack.http(None).get("/readyz").json() == {"status": "ready", "redis": True, "workers": 0,
                                                          "detail": ""}
    finally:
        stack.stop()


def test_complete_method_over_rest_grpc_and_stream_matches_the_in_process_verifier(stack: Stack,
                                                                                   model_id: str) -> None:
    from gls_core.verify import VerifyOptions, robustness, verify_property

    spec, theta = digits_model()
    x, y = digits_test(12)
    eps = 0.05
    expected = []
    for i in range(12):
        verdict = verify_property(spec, theta.double(), robustness(spec, x[i].double(), int(y[i]), eps),
                                  VerifyOptions(timeout=20))
        expected.append(verdict.status)
    assert "unknown" not in expected and {"verified", "falsified"} <= set(expected)
    deeppoly = certify(spec, theta, x, y, eps, "deeppoly")
    options = {"timeout": 20}
    rest = stack.client().certify(x, y, eps, "complete", model_id=model_id, options=options)
    with stack.certifier() as client:
        unary = client.certify(x, y, eps, "complete", model_id=model_id, options=options)
        streamed = list(client.certify_stream(x, y, eps, "complete", model_id=model_id, options=options,
                                              chunk_size=5))
    for verdicts in (rest["verdicts"], unary["verdicts"], streamed):
        assert [v["index"] for v in verdicts] == list(range(12))
        assert [v["status"] for v in verdicts] == expected
        assert [v["certified"] for v in verdicts] == [v["correct"] and s == "verified"
                                                      for v, s in zip(verdicts, expected)]
    assert rest["method"] == unary["method"] == "complete" and rest["certified"] == expected.count("verified")
    assert all(v["certified"] for v, d in zip(rest["verdicts"], deeppoly.tolist()) if d)  # never less than DeepPoly
    for verdict in rest["verdicts"]:
        if verdict["status"] == "verified":
            assert verdict["worst_margin"] < 0 and verdict["seconds"] > 0


def test_complete_method_limits_are_enforced(stack: Stack, model_id: str) -> None:
    x, y = digits_test(3)
    body = {"model_id": model_id, "inputs": x.tolist(), "labels": y.tolist(), "eps": 0.05,
            "relaxation": {"method": "complete", "timeout": 10_000}}
    status, detail = rest_error(stack, body)
    assert status == 422 and "relaxation.timeout" in detail and "GLS_CERTIFY_COMPLETE_MAX_TIMEOUT_S" in detail[
        "relaxation.timeout"]
    status, detail = rest_error(stack, {**body, "relaxation": {"method": "complete", "steps": 3}})
    assert status == 422 and "relaxation" in detail
    status, detail = rest_error(stack, {**body, "relaxation": {"method": "deeppoly", "timeout": 5}})
    assert status == 422 and "relaxation.timeout" in detail
    with stack.certifier() as client:
        code, details = grpc_code(client, CertifierClient.request(x, y, 0.05, "complete", model_id=model_id,
                                                                  options={"timeout": 10_000}))
    assert code == "INVALID_ARGUMENT" and "complete_timeout" in details


def test_a_burst_of_calls_queues_instead_of_being_refused(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    burst = start_stack(tmp_path, workers=1, certifier_threads=2, certifier_queue=32)
    try:
        model = upload_digits_model(burst, tmp_path)
        x, y = digits_test(8)
        channel = grpc.insecure_channel(burst.gateway.certifier_address)
        certify_call = channel.unary_unary("/gls.v1.Certifier/Certify",
                                           request_serializer=certifier_pb2.CertifyRequest.SerializeToString,
                                           response_deserializer=certifier_pb2.CertifyResponse.FromString)
        health = health_pb2_grpc.HealthStub(channel)
        request = CertifierClient.request(x, y, EPS, "deeppoly", model_id=model)

        def one(index: int) -> str:
            try:
                if index % 3 == 2:
                    health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
                else:
                    certify_call(request, metadata=(("authorization", f"Bearer {ALICE}"),), timeout=60)
            except grpc.RpcError as error:
                return error.code().name
            return "OK"

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(one, range(48)))
        channel.close()
        assert codes == ["OK"] * 48  # 32 Certify calls on 2 slots, and 16 health checks among them
    finally:
        burst.stop()


def test_workers_that_refuse_the_gateway_are_a_named_bad_gateway(tmp_path: Path) -> None:
    """A worker holding another GLS_WORKER_TOKEN: 502 naming the cause over REST, UNAVAILABLE over gRPC, never 500."""
    running = start_stack(tmp_path, workers=0, worker_token="the-gateways-token")
    try:
        stranger = running.settings.model_copy(update={"worker_token": "another-token"})
        running.workers.append(serve_worker(stranger))
        x, y = digits_test(4)
        with pytest.raises(ClientError) as rest:
            running.client().certify(x, y, EPS, "ibp", model=inline())
        assert rest.value.status == 502, rest.value
        assert "UNAUTHENTICATED" in str(rest.value) and "GLS_WORKER_TOKEN" in str(rest.value)
        spec, theta = digits_model()
        with running.certifier() as client, pytest.raises(ClientError) as rpc:
            client.certify(x, y, EPS, "ibp", inline=(spec, theta))
        assert rpc.value.status == "UNAVAILABLE" and "UNAUTHENTICATED" in str(rpc.value), rpc.value
    finally:
        running.stop()
