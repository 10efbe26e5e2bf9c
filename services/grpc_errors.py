"""The gRPC error mapping: how every GLS gRPC server (bound worker, Certifier) ends a failed call, in one place.

An :class:`~gls_core.errors.InvalidInput` (from gls_core's validators, the codec or a server's own
checks) is INVALID_ARGUMENT with one BadRequest field violation per bad field, read from the error's
``field`` (never parsed out of its message). The other expected failures have their own code and
``ErrorInfo`` reason (see :class:`~services.rich_status.Reason`). Anything else -- a ``ValueError``
from a bug included -- is INTERNAL: logged with its traceback under an incident id, which is all
the caller is told.
"""

from __future__ import annotations

import logging
import uuid
from typing import NoReturn, TypeVar

import grpc
import redis
from google.protobuf.message import DecodeError, Message

from gls_core.errors import Interrupted, InvalidInput

from . import rich_status
from .errors import STORAGE_FULL, ApiError, NotFoundError, QuotaExceeded
from .rich_status import Reason
from .store import OverQuota

log = logging.getLogger("services.grpc")

Code = grpc.StatusCode


RequestMessage = TypeVar("RequestMessage", bound=Message)


def parse_request(kind: type[RequestMessage], payload: bytes, number: int | None = None) -> RequestMessage:
    """A payload parsed as ``kind`` by the method itself, after the caller's token was checked: one that is no such
    message is the caller's error (INVALID_ARGUMENT naming ``request``), not grpcio's INTERNAL "Exception
    deserializing request!" that a ``request_deserializer`` would answer."""
    try:
        return kind.FromString(payload)
    except DecodeError:
        which = "the payload" if number is None else f"message {number}"
        raise InvalidInput("request", f"{which} is not a valid {kind.DESCRIPTOR.full_name} (protobuf parse "
                                      "error)") from None


class MissingBlobError(LookupError):
    """A blob named only by a hash the worker does not hold: the caller resends it inline."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"missing blob {sha256}")
        self.sha256 = sha256


class SlotTimeout(Exception):
    """The call's deadline passed while it waited for a compute slot."""


def status_for(error: BaseException, method: str) -> grpc.Status:
    """The status ``method`` answers when it fails with ``error`` (an unexpected one is logged here)."""
    if isinstance(error, InvalidInput):
        return rich_status.status(Code.INVALID_ARGUMENT, str(error), Reason.INVALID_REQUEST,
                                  fields=error.violations())
    if isinstance(error, MissingBlobError):
        return rich_status.status(Code.FAILED_PRECONDITION, str(error), Reason.MISSING_BLOB, {"sha256": error.sha256})
    if isinstance(error, SlotTimeout):
        return rich_status.status(Code.DEADLINE_EXCEEDED, f"deadline passed while waiting for a compute slot "
                                                          f"({method})", Reason.NO_COMPUTE_SLOT)
    if isinstance(error, Interrupted):
        return rich_status.status(Code.CANCELLED, f"{method} stopped: its caller has gone ({error})",
                                  Reason.CALLER_GONE)
    if isinstance(error, NotFoundError):
        return rich_status.status(Code.NOT_FOUND, error.message, Reason.NOT_FOUND)
    if isinstance(error, OverQuota):
        error = QuotaExceeded(error)
    if isinstance(error, QuotaExceeded):
        return rich_status.status(Code.RESOURCE_EXHAUSTED, error.message, Reason.QUOTA_EXCEEDED)
    if isinstance(error, ApiError):
        if error.status == 401:
            return rich_status.status(Code.UNAUTHENTICATED, error.message, Reason.UNAUTHENTICATED)
        return rich_status.status(Code.UNAVAILABLE, error.message, Reason.WORKERS_UNAVAILABLE)
    if isinstance(error, redis.exceptions.OutOfMemoryError):
        return rich_status.status(Code.RESOURCE_EXHAUSTED, STORAGE_FULL, Reason.STORAGE_FULL)
    if isinstance(error, redis.ConnectionError | redis.TimeoutError):
        return rich_status.status(Code.UNAVAILABLE, "storage (Redis) unavailable; retry shortly",
                                  Reason.STORAGE_UNAVAILABLE)
    incident = uuid.uuid4().hex[:12]  # a bug: its text stays in the log, the caller gets an id to quote
    log.error("%s failed (incident %s)", method, incident, exc_info=error)
    return rich_status.status(Code.INTERNAL, f"{method} failed: internal error (incident {incident}; the server's "
                                             "log has the details)", Reason.INTERNAL_ERROR, {"incident": incident})


def abort(context: grpc.ServicerContext, status: grpc.Status) -> NoReturn:
    context.abort_with_status(status)
    raise AssertionError("unreachable: abort_with_status raises")
