"""The public gRPC ``Certifier``: the semantics and numbers of ``POST /v1/certify``, over protobuf.

Requests carry the bearer token in the ``authorization`` metadata, checked before the payload is
parsed (the handlers take raw bytes): without a valid token every call is UNAUTHENTICATED, and a
payload that is no CertifyRequest is INVALID_ARGUMENT (field ``request``). Errors map in
``services.grpc_errors``: a bad field is INVALID_ARGUMENT naming its full path (``inline.spec.name``),
another tenant's model NOT_FOUND, no live worker UNAVAILABLE.

``CertifyStream`` takes the model from its first message (later messages leave it unset or repeat
it exactly); the perturbation and relaxation of a message apply to it, and when unset are those of
the first message. A message without inputs only sets these. Verdicts come back in input order,
indexed across the whole stream.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gls_core.errors import InvalidInput
from gls_core.nets.spec import NetSpec
from gls_core.validation import check_radius

from ..codec import relaxation_from_proto, spec_from_proto, tensor_from_proto
from ..grpc_errors import SlotTimeout, abort, parse_request, status_for
from ..proto.gls.v1 import certifier_pb2
from .certify import (
    COMPLETE,
    CertifyTask,
    InputVerdict,
    certify,
    check_complete_inputs,
    check_inputs,
    check_labels,
    check_radii,
    check_spec,
    check_theta,
    complete_options,
    relaxation,
    stored_model,
    verify_stream,
)
from .context import Gateway
from .errors import ApiError, InvalidRequest

SERVICE_NAME = certifier_pb2.DESCRIPTOR.services_by_name["Certifier"].full_name
Model = tuple[NetSpec, torch.Tensor]


def _request(payload: bytes, number: int | None = None) -> certifier_pb2.CertifyRequest:
    """Parse a payload (after the token was checked): one that is no CertifyRequest is the caller's error."""
    return parse_request(certifier_pb2.CertifyRequest, payload, number)


def _verdict_proto(verdict: InputVerdict) -> certifier_pb2.Verdict:
    worst = math.nan if verdict.worst_margin is None else verdict.worst_margin
    return certifier_pb2.Verdict(index=verdict.index, correct=verdict.correct, certified=verdict.certified,
                                 worst_margin=worst, margin_upper=verdict.margin_upper,
                                 predicted=verdict.predicted, status=verdict.status or "",
                                 seconds=verdict.seconds or 0.0)


class CertifierService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._slots = threading.BoundedSemaphore(gateway.settings.certifier_threads)

    @contextmanager
    def _slot(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Wait for one of ``certifier_threads`` slots until the call's deadline (none: as long as it takes)."""
        if not self._slots.acquire(timeout=context.time_remaining()):
            raise SlotTimeout("deadline passed while waiting for a free Certifier slot")
        try:
            yield
        finally:
            self._slots.release()

    # ------------------------------------------------------------------------------------- edge

    def _tenant(self, context: grpc.ServicerContext) -> str:
        metadata = {key.lower(): value for key, value in context.invocation_metadata()}
        header = metadata.get("authorization", "")
        scheme, _, token = str(header).partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token: send metadata 'authorization: Bearer <token>'")
        tenant = self.gateway.tenant_for(token.strip())
        if tenant is None:
            raise ApiError(401, "invalid bearer token")
        return tenant

    def _record(self, name: str, code: grpc.StatusCode, started: float) -> None:
        self.gateway.metrics.grpc_requests.labels(name, code.name).inc()
        self.gateway.metrics.grpc_latency.labels(name).observe(time.perf_counter() - started)

    # ----------------------------------------------------------------------------------- decode

    def _model(self, tenant: str, request: certifier_pb2.CertifyRequest) -> Model:
        kind = request.WhichOneof("model")
        if kind == "model_id":
            spec, theta = stored_model(self.gateway.store, tenant, request.model_id)
        elif kind == "inline":
            try:
                spec = spec_from_proto(request.inline.spec)
            except InvalidInput as error:  # its fields are the spec's: spec.name -> inline.spec.name
                raise error.within("inline") from None
            theta = check_theta(spec, tensor_from_proto(request.inline.theta, "inline.theta",
                                                        dtypes=("float32", "float64")), "inline.theta")
        else:
            raise InvalidRequest.one("model", "set model_id (a stored model) or inline (spec and theta)")
        check_spec(spec, "inline.spec" if kind == "inline" else "model_id")
        return spec, theta

    def _task(self, model: Model, request: certifier_pb2.CertifyRequest,
              first: certifier_pb2.CertifyRequest | None = None) -> CertifyTask:
        """The request's perturbation and relaxation, each taken from ``first`` (a stream's) when unset."""
        spec, theta = model
        perturbation = first if first is not None and not request.HasField("perturbation") else request
        relaxing = first if first is not None and not request.HasField("relaxation") else request
        raw = tensor_from_proto(request.inputs, "inputs", dtypes=("float32", "float64", "uint8"))
        x = raw.to(torch.float32).div_(255) if raw.dtype == torch.uint8 else raw
        x = check_inputs(spec, x, self.gateway.settings.certify_max_inputs)
        y = check_labels(tensor_from_proto(request.labels, "labels", dtypes=("int64", "uint8")), x.shape[0],
                         spec.num_outputs)
        eps: float | torch.Tensor = check_radius(perturbation.perturbation.eps, "perturbation.eps")
        if perturbation.perturbation.HasField("eps_per_input"):
            field = "perturbation.eps_per_input"
            eps = check_radii(tensor_from_proto(perturbation.perturbation.eps_per_input, field,
                                                        dtypes=("float32", "float64")), x.shape[0], field)
        proto = relaxing.relaxation
        options: dict[str, Any] = {}
        if proto.method == COMPLETE:
            check_complete_inputs(x.shape[0], self.gateway.settings)
            options = complete_options(proto.complete_timeout, self.gateway.settings,
                                       "relaxation.complete_timeout")
            return CertifyTask(spec, theta, x, y, eps, COMPLETE, options)
        if not proto.method:
            method = "deeppoly"
        else:
            method, options = relaxation_from_proto(proto)
        method, options = relaxation(method, options)
        return CertifyTask(spec, theta, x, y, eps, method, options)

    def _run(self, api: str, task: CertifyTask, offset: int = 0) -> list[InputVerdict]:
        metrics = self.gateway.metrics
        metrics.certify_inputs.labels(api, task.method).inc(task.x.shape[0])
        verdicts = certify(self.gateway.pool, task, offset)
        metrics.certified_inputs.labels(api, task.method).inc(sum(verdict.certified for verdict in verdicts))
        return verdicts

    # ------------------------------------------------------------------------------------- RPCs

    def Certify(self, payload: bytes,  # noqa: N802 (gRPC's name)
                context: grpc.ServicerContext) -> certifier_pb2.CertifyResponse:
        def work() -> certifier_pb2.CertifyResponse:
            tenant = self._tenant(context)  # before the payload is parsed: no token, no parse errors either
            request = _request(payload)
            task = self._task(self._model(tenant, request), request)
            verdicts = self._run("grpc", task)
            return certifier_pb2.CertifyResponse(
                verdicts=[_verdict_proto(verdict) for verdict in verdicts], total=len(verdicts),
                certified=sum(verdict.certified for verdict in verdicts), method=task.method,
                eps=request.perturbation.eps)

        started = time.perf_counter()
        try:
            with self._slot(context):
                response = work()
        except Exception as error:
            status = status_for(error, "Certify")
            self._record("Certify", status.code, started)
            abort(context, status)
        self._record("Certify", grpc.StatusCode.OK, started)
        return response

    def CertifyStream(self, payloads: Iterable[bytes],  # noqa: N802 (gRPC's name)
                      context: grpc.ServicerContext) -> Iterator[certifier_pb2.Verdict]:
        started = time.perf_counter()
        try:
            with self._slot(context):
                yield from self._stream(payloads, context)
        except Exception as error:
            status = status_for(error, "CertifyStream")
            self._record("CertifyStream", status.code, started)
            abort(context, status)
        self._record("CertifyStream", grpc.StatusCode.OK, started)

    def _stream(self, payloads: Iterable[bytes], context: grpc.ServicerContext) -> Iterator[certifier_pb2.Verdict]:
        tenant = self._tenant(context)
        first: certifier_pb2.CertifyRequest | None = None
        model: Model | None = None
        offset = 0
        for number, payload in enumerate(payloads):
            request = _request(payload, number)
            if first is None:
                first, model = request, self._model(tenant, request)
            elif request.WhichOneof("model") is not None and self._model_bytes(request) != self._model_bytes(first):
                raise InvalidRequest.one("model", f"message {number} names another model; leave it unset or repeat "
                                                  "the first message's model")
            if not request.HasField("inputs"):
                continue
            assert model is not None
            task = self._task(model, request, first)
            if task.method == COMPLETE:  # verdicts go out as the workers decide them
                self.gateway.metrics.certify_inputs.labels("grpc", task.method).inc(task.x.shape[0])
                for verdict in verify_stream(self.gateway.pool, task, offset):
                    self.gateway.metrics.certified_inputs.labels("grpc", task.method).inc(verdict.certified)
                    offset += 1
                    yield _verdict_proto(verdict)
                continue
            verdicts = self._run("grpc", task, offset)
            offset += len(verdicts)
            yield from (_verdict_proto(verdict) for verdict in verdicts)

    @staticmethod
    def _model_bytes(request: certifier_pb2.CertifyRequest) -> bytes:
        kind = request.WhichOneof("model")
        if kind == "model_id":
            return b"id:" + request.model_id.encode()
        return b"inline:" + request.inline.SerializeToString(deterministic=True)

    def add_to_server(self, server: grpc.Server) -> None:
        # No request_deserializer: the methods parse the payload themselves, after checking the token.
        handlers = {
            "Certify": grpc.unary_unary_rpc_method_handler(
                self.Certify, response_serializer=certifier_pb2.CertifyResponse.SerializeToString),
            "CertifyStream": grpc.stream_stream_rpc_method_handler(
                self.CertifyStream, response_serializer=certifier_pb2.Verdict.SerializeToString),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def start_certifier(gateway: Gateway, host: str, port: int) -> tuple[grpc.Server, int, health.HealthServicer]:
    """The Certifier with health checking and reflection, listening on ``host:port`` (0: a free port)."""
    settings = gateway.settings
    # Every admitted RPC has a thread: certifier_threads compute, certifier_queue wait for a slot, and health
    # checks and reflection (which take no slot) always find one.
    limit = settings.certifier_threads + settings.certifier_queue + 4
    server = grpc.server(ThreadPoolExecutor(max_workers=limit, thread_name_prefix="certifier"),
                         options=settings.grpc_options, maximum_concurrent_rpcs=limit)
    CertifierService(gateway).add_to_server(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    tls = settings.server_tls
    bound = (server.add_secure_port(f"{host}:{port}", tls.grpc_credentials()) if tls
             else server.add_insecure_port(f"{host}:{port}"))
    if bound == 0:
        raise RuntimeError(f"cannot listen on {host}:{port} for the Certifier")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer
