"""The public gRPC ``Certifier``: the semantics and numbers of ``POST /v1/certify``, over protobuf.

Requests carry the bearer token in the ``authorization`` metadata. Errors map in one place
(``CertifierService._status``): a bad field is INVALID_ARGUMENT with ``field: reason``, another tenant's model
NOT_FOUND, no live worker UNAVAILABLE, a missing or unknown token UNAUTHENTICATED.

``CertifyStream`` takes the model from its first message (later messages leave it unset or repeat
it exactly); the perturbation and relaxation of a message apply to it, and when unset are those of
the first message. A message without inputs only sets these. Verdicts come back in input order,
indexed across the whole stream.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, NoReturn

import grpc
import redis
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gls_core.nets.spec import NetSpec

from .. import rich_status
from ..codec import relaxation_from_proto, spec_from_proto, tensor_from_proto
from ..proto.gls.v1 import certifier_pb2, common_pb2
from ..rich_status import Reason
from ..store import OverQuota
from .certify import (
    COMPLETE,
    CertifyTask,
    Verdict,
    certify,
    check_complete_inputs,
    check_eps,
    check_eps_per_input,
    check_inputs,
    check_labels,
    check_spec,
    check_theta,
    complete_options,
    relaxation,
    stored_model,
    verify_stream,
)
from .context import Gateway
from .errors import STORAGE_FULL, ApiError, InvalidRequest, NotFoundError, QuotaExceeded

log = logging.getLogger("services.gateway.certifier")

SERVICE_NAME = certifier_pb2.DESCRIPTOR.services_by_name["Certifier"].full_name
Model = tuple[NetSpec, torch.Tensor]


def _codec_error(field: str, error: ValueError) -> InvalidRequest:
    """codec messages start with the (possibly more precise) field they are about: keep it as the field."""
    message = str(error)
    head, _, rest = message.partition(" ")
    if head.rstrip(":").startswith(field) and rest:
        return InvalidRequest.one(head.rstrip(":"), rest)
    return InvalidRequest.one(field, message)


def _tensor(message: common_pb2.Tensor, field: str, dtypes: tuple[str, ...]) -> torch.Tensor:
    try:
        return tensor_from_proto(message, field, dtypes=dtypes)
    except ValueError as error:
        raise _codec_error(field, error) from None


def _verdict_proto(verdict: Verdict) -> certifier_pb2.Verdict:
    worst = math.nan if verdict.worst_margin is None else verdict.worst_margin
    return certifier_pb2.Verdict(index=verdict.index, correct=verdict.correct, certified=verdict.certified,
                                 worst_margin=worst, margin_upper=verdict.margin_upper,
                                 predicted=verdict.predicted, status=verdict.status or "",
                                 seconds=verdict.seconds or 0.0)


class SlotTimeout(Exception):
    """The caller's deadline passed while its request waited for a free Certifier slot."""


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

    @staticmethod
    def _status(error: Exception, name: str) -> grpc.Status:
        """The one mapping from gateway errors to gRPC status codes, with each error's reason (rich status)."""
        code = grpc.StatusCode
        if isinstance(error, InvalidRequest):
            return rich_status.status(code.INVALID_ARGUMENT, str(error), Reason.INVALID_REQUEST, fields=error.errors)
        if isinstance(error, SlotTimeout):
            return rich_status.status(code.DEADLINE_EXCEEDED, str(error), Reason.NO_COMPUTE_SLOT)
        if isinstance(error, NotFoundError):
            return rich_status.status(code.NOT_FOUND, error.message, Reason.NOT_FOUND)
        if isinstance(error, OverQuota):
            error = QuotaExceeded(error)
        if isinstance(error, QuotaExceeded):
            return rich_status.status(code.RESOURCE_EXHAUSTED, error.message, Reason.QUOTA_EXCEEDED)
        if isinstance(error, ApiError):
            if error.status == 401:
                return rich_status.status(code.UNAUTHENTICATED, error.message, Reason.UNAUTHENTICATED)
            return rich_status.status(code.UNAVAILABLE, error.message, Reason.WORKERS_UNAVAILABLE)
        if isinstance(error, redis.exceptions.OutOfMemoryError):
            return rich_status.status(code.RESOURCE_EXHAUSTED, STORAGE_FULL, Reason.STORAGE_FULL)
        if isinstance(error, redis.ConnectionError | redis.TimeoutError):
            return rich_status.status(code.UNAVAILABLE, "storage (Redis) unavailable; retry shortly",
                                      Reason.STORAGE_UNAVAILABLE)
        incident = uuid.uuid4().hex[:12]  # a bug: logged with an id, answered without internals
        log.error("unhandled error %s in Certifier/%s", incident, name, exc_info=error)
        return rich_status.status(code.INTERNAL, f"internal error (incident {incident}; see the server log)",
                                  Reason.INTERNAL_ERROR, {"incident": incident})

    def _record(self, name: str, code: grpc.StatusCode, started: float) -> None:
        self.gateway.metrics.grpc_requests.labels(name, code.name).inc()
        self.gateway.metrics.grpc_latency.labels(name).observe(time.perf_counter() - started)

    @staticmethod
    def _abort(context: grpc.ServicerContext, status: grpc.Status) -> NoReturn:
        context.abort_with_status(status)
        raise AssertionError("context.abort_with_status returned")  # pragma: no cover

    # ----------------------------------------------------------------------------------- decode

    def _model(self, tenant: str, request: certifier_pb2.CertifyRequest) -> Model:
        kind = request.WhichOneof("model")
        if kind == "model_id":
            spec, theta = stored_model(self.gateway.store, tenant, request.model_id)
        elif kind == "inline":
            try:
                spec = spec_from_proto(request.inline.spec)
            except ValueError as error:
                raise _codec_error("inline.spec", error) from None
            theta = check_theta(spec, _tensor(request.inline.theta, "inline.theta", ("float32", "float64")),
                                "inline.theta")
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
        raw = _tensor(request.inputs, "inputs", ("float32", "float64", "uint8"))
        x = raw.to(torch.float32).div_(255) if raw.dtype == torch.uint8 else raw
        x = check_inputs(spec, x, self.gateway.settings.certify_max_inputs)
        y = check_labels(_tensor(request.labels, "labels", ("int64", "uint8")), x.shape[0],
                         spec.num_outputs)
        eps: float | torch.Tensor = check_eps(perturbation.perturbation.eps, "perturbation.eps")
        if perturbation.perturbation.HasField("eps_per_input"):
            eps = check_eps_per_input(_tensor(perturbation.perturbation.eps_per_input, "perturbation.eps_per_input",
                                              ("float32", "float64")), x.shape[0], "perturbation.eps_per_input")
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
            try:
                method, options = relaxation_from_proto(proto)
            except ValueError as error:
                raise _codec_error("relaxation", error) from None
        method, options = relaxation(method, options)
        return CertifyTask(spec, theta, x, y, eps, method, options)

    def _run(self, api: str, task: CertifyTask, offset: int = 0) -> list[Verdict]:
        metrics = self.gateway.metrics
        metrics.certify_inputs.labels(api, task.method).inc(task.x.shape[0])
        verdicts = certify(self.gateway.pool, task, offset)
        metrics.certified_inputs.labels(api, task.method).inc(sum(verdict.certified for verdict in verdicts))
        return verdicts

    # ------------------------------------------------------------------------------------- RPCs

    def Certify(self, request: certifier_pb2.CertifyRequest,  # noqa: N802 (gRPC's name)
                context: grpc.ServicerContext) -> certifier_pb2.CertifyResponse:
        def work() -> certifier_pb2.CertifyResponse:
            tenant = self._tenant(context)
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
            status = self._status(error, "Certify")
            self._record("Certify", status.code, started)
            self._abort(context, status)
        self._record("Certify", grpc.StatusCode.OK, started)
        return response

    def CertifyStream(self, requests: Iterable[certifier_pb2.CertifyRequest],  # noqa: N802 (gRPC's name)
                      context: grpc.ServicerContext) -> Iterator[certifier_pb2.Verdict]:
        started = time.perf_counter()
        try:
            with self._slot(context):
                yield from self._stream(requests, context)
        except Exception as error:
            status = self._status(error, "CertifyStream")
            self._record("CertifyStream", status.code, started)
            self._abort(context, status)
        self._record("CertifyStream", grpc.StatusCode.OK, started)

    def _stream(self, requests: Iterable[certifier_pb2.CertifyRequest],
                context: grpc.ServicerContext) -> Iterator[certifier_pb2.Verdict]:
        tenant = self._tenant(context)
        first: certifier_pb2.CertifyRequest | None = None
        model: Model | None = None
        offset = 0
        for number, request in enumerate(requests):
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
        handlers = {
            "Certify": grpc.unary_unary_rpc_method_handler(
                self.Certify, request_deserializer=certifier_pb2.CertifyRequest.FromString,
                response_serializer=certifier_pb2.CertifyResponse.SerializeToString),
            "CertifyStream": grpc.stream_stream_rpc_method_handler(
                self.CertifyStream, request_deserializer=certifier_pb2.CertifyRequest.FromString,
                response_serializer=certifier_pb2.Verdict.SerializeToString),
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
