"""The BoundWorker RPCs: decode and validate, compute with gls_core, encode.

A worker never dies on a request: a failure becomes a status in ``services.grpc_errors`` (a field
gls_core or the decoder names as invalid: INVALID_ARGUMENT; an unknown blob: FAILED_PRECONDITION;
anything else, a ValueError from a bug included: INTERNAL under an incident id). At most
``concurrency`` requests compute at once; the others wait for a slot within their deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import grpc
import torch

from gls_core.bounds import using_plan
from gls_core.bounds.api import compute_bounds, margin_spec
from gls_core.training.points import evaluate_members
from gls_core.verify import VerifyOptions, verify_each

from ..codec import tensor_to_proto
from ..grpc_errors import SlotTimeout, abort, parse_request, status_for
from ..proto.gls.v1 import bound_worker_pb2
from .decoding import RequestDecoder

log = logging.getLogger(__name__)

Response = TypeVar("Response")


SERVICE_NAME = bound_worker_pb2.DESCRIPTOR.services_by_name["BoundWorker"].full_name


class BoundWorkerService:
    def __init__(self, decoder: RequestDecoder, concurrency: int, verify_max_timeout: float = 300.0) -> None:
        self.decoder = decoder
        self.verify_max_timeout = verify_max_timeout
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.served = 0
        self.abandoned = 0  # computations stopped early because their caller had gone

    # Each method takes the raw payload and parses it inside _handle (grpc_errors.parse_request): a payload that is
    # no such request is INVALID_ARGUMENT naming ``request``, as the Certifier answers, not grpcio's INTERNAL.
    def EvaluatePoints(self, payload: bytes,  # noqa: N802 (gRPC's name)
                       context: grpc.ServicerContext) -> bound_worker_pb2.PointsResponse:
        return self._handle("EvaluatePoints", context, lambda: self._points(
            parse_request(bound_worker_pb2.PointsRequest, payload), context))

    def Bounds(self, payload: bytes,  # noqa: N802 (gRPC's name)
               context: grpc.ServicerContext) -> bound_worker_pb2.BoundsResponse:
        return self._handle("Bounds", context, lambda: self._bounds(
            parse_request(bound_worker_pb2.BoundsRequest, payload), context))

    def Verify(self, payload: bytes,  # noqa: N802 (gRPC's name)
               context: grpc.ServicerContext) -> bound_worker_pb2.VerifyResponse:
        return self._handle("Verify", context, lambda: self._verify(
            parse_request(bound_worker_pb2.VerifyRequest, payload), context))

    def add_to_server(self, server: grpc.Server) -> None:
        """Register the RPCs as the generated ``add_BoundWorkerServicer_to_server`` would (that module is untyped),
        without request deserializers: the methods parse their payloads (after the token interceptor)."""
        handlers = {
            "EvaluatePoints": grpc.unary_unary_rpc_method_handler(
                self.EvaluatePoints, response_serializer=bound_worker_pb2.PointsResponse.SerializeToString),
            "Bounds": grpc.unary_unary_rpc_method_handler(
                self.Bounds, response_serializer=bound_worker_pb2.BoundsResponse.SerializeToString),
            "Verify": grpc.unary_unary_rpc_method_handler(
                self.Verify, response_serializer=bound_worker_pb2.VerifyResponse.SerializeToString),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    def _handle(self, name: str, context: grpc.ServicerContext, work: Callable[[], Response]) -> Response:
        with self._lock:
            self.in_flight += 1
        try:
            try:
                response = work()
            except Exception as error:  # every failure, expected or a bug, is answered by the one mapping
                status = status_for(error, name)
            else:
                with self._lock:
                    self.served += 1
                return response
        finally:
            with self._lock:
                self.in_flight -= 1
        log.info("%s rejected: %s %s", name, status.code.name, status.details)
        abort(context, status)

    def _caller_gone(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        """A ``should_stop`` for the computation of one call; counts the call in ``abandoned`` once it stops it."""
        stopped = False

        def gone() -> bool:
            nonlocal stopped
            if not stopped and not context.is_active():
                stopped = True
                with self._lock:
                    self.abandoned += 1
            return stopped

        return gone

    def _compute_slot(self, context: grpc.ServicerContext) -> _Slot:
        return _Slot(self._slots, context.time_remaining())

    def _points(self, request: bound_worker_pb2.PointsRequest,
                context: grpc.ServicerContext) -> bound_worker_pb2.PointsResponse:
        job = self.decoder.points(request)
        with self._compute_slot(context), using_plan(job.kernel_plan) as followed:
            started = time.perf_counter()
            evaluated = evaluate_members(job.spec, job.proposal, job.objective, job.x, job.y, job.eps, job.seed,
                                         job.block, job.start, job.stop, should_stop=self._caller_gone(context))
            seconds = time.perf_counter() - started
        response = bound_worker_pb2.PointsResponse(compute_seconds=seconds)
        if job.kernel_plan is None:  # the caller makes its plan from these choices
            response.kernel_plan.choices.update(followed)
        tensor_to_proto(evaluated.losses, out=response.losses)
        if evaluated.grads is not None:
            tensor_to_proto(evaluated.grads, out=response.gradients)
        return response

    def _bounds(self, request: bound_worker_pb2.BoundsRequest,
                context: grpc.ServicerContext) -> bound_worker_pb2.BoundsResponse:
        job = self.decoder.bounds(request)
        with self._compute_slot(context):
            started = time.perf_counter()
            spec_matrix = None
            sides: Literal["both", "upper"] = "both"
            if job.labels is not None:  # margins: the robust loss and certification read only their upper bounds
                spec_matrix = margin_spec(job.labels.cpu(), job.spec.num_outputs).to(job.x.device)
                sides = "upper"
            with torch.no_grad():  # a caller that has gone (cancelled, deadline passed) stops a method's steps
                lower, upper = compute_bounds(job.spec, job.x, job.eps, job.method, C=spec_matrix, params=job.params,
                                              sides=sides, should_stop=self._caller_gone(context), **job.options)
            seconds = time.perf_counter() - started
        response = bound_worker_pb2.BoundsResponse(compute_seconds=seconds)
        tensor_to_proto(lower, out=response.lower)
        tensor_to_proto(upper, out=response.upper)
        return response


    def _verify(self, request: bound_worker_pb2.VerifyRequest,
                context: grpc.ServicerContext) -> bound_worker_pb2.VerifyResponse:
        job = self.decoder.verify(request, self.verify_max_timeout)
        response = bound_worker_pb2.VerifyResponse()
        with self._compute_slot(context):
            started = time.perf_counter()
            # A caller that has gone (cancelled, deadline passed) stops the search at its next batch.
            for verdict in verify_each(job.spec, job.params, job.x, job.labels, job.eps,
                                       VerifyOptions(timeout=job.timeout), should_stop=lambda: not context.is_active()):
                item = response.verdicts.add(status=verdict.status, seconds=verdict.seconds,
                                             subdomains=verdict.subdomains, bound=verdict.bound,
                                             decided_by=verdict.decided_by)
                if verdict.counterexample is not None:
                    tensor_to_proto(verdict.counterexample.to(torch.float32), out=item.counterexample)
                if not context.is_active():
                    break
            response.compute_seconds = time.perf_counter() - started
        return response


class _Slot:
    """One of the ``concurrency`` compute slots, waited for no longer than the request's deadline."""

    def __init__(self, semaphore: threading.BoundedSemaphore, timeout: float | None) -> None:
        self.semaphore, self.timeout = semaphore, timeout

    def __enter__(self) -> None:
        timeout = None if self.timeout is None else max(0.0, self.timeout)
        if not self.semaphore.acquire(timeout=timeout):
            raise SlotTimeout

    def __exit__(self, *exc: object) -> None:
        self.semaphore.release()
