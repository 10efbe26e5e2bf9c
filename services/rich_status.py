"""gRPC errors with machine-readable details (google.rpc rich status), so callers branch on reasons, not on text.

Every error a GLS server answers carries a ``google.rpc.ErrorInfo`` (domain ``gls.v1``, one of the
``Reason`` values, and metadata such as the missing blob's hash or an incident id), and an
INVALID_ARGUMENT also carries a ``google.rpc.BadRequest`` with one field violation per bad field.
The status code and the message stay as they were, so plain clients lose nothing. Clients read
them back with :func:`error_info` and :func:`field_violations`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "gls.v1"
MAX_VIOLATIONS = 16
MAX_TEXT = 300
"""Details travel as trailing metadata, which clients cap (8 KiB by default): both bounds keep them under it."""


class Reason(StrEnum):
    """Why a call failed, as ``ErrorInfo.reason``."""

    INVALID_REQUEST = "INVALID_REQUEST"  # a field is wrong (BadRequest names it)
    MISSING_BLOB = "MISSING_BLOB"  # the worker does not hold a blob sent by hash: resend it inline
    NO_COMPUTE_SLOT = "NO_COMPUTE_SLOT"  # the deadline passed while waiting for a compute slot
    NOT_FOUND = "NOT_FOUND"  # no such model (or not the caller's)
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"  # the tenant's quota is used up
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no valid token
    WORKERS_UNAVAILABLE = "WORKERS_UNAVAILABLE"  # no bound worker could answer
    STORAGE_FULL = "STORAGE_FULL"  # Redis is at its memory ceiling
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"  # Redis cannot be reached
    CALLER_GONE = "CALLER_GONE"  # the caller cancelled (or its deadline passed): the work stopped between blocks
    INTERNAL_ERROR = "INTERNAL_ERROR"  # a bug: metadata["incident"] is in the server's log


def _packed(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status(code: grpc.StatusCode, message: str, reason: Reason, metadata: Mapping[str, str] | None = None,
           fields: Iterable[tuple[str, str]] = ()) -> grpc.Status:
    """A status carrying ``reason`` (and, for bad fields, their violations) besides the code and message."""
    details = [_packed(error_details_pb2.ErrorInfo(reason=reason.value, domain=DOMAIN, metadata=dict(metadata or {})))]
    violations = [error_details_pb2.BadRequest.FieldViolation(field=field[:MAX_TEXT],
                                                              description=description[:MAX_TEXT])
                  for field, description in list(fields)[:MAX_VIOLATIONS]]
    if violations:
        details.append(_packed(error_details_pb2.BadRequest(field_violations=violations)))
    number = code.value[0]
    assert code_pb2.Code.Name(number) == code.name  # grpc's and google.rpc's codes are the same numbers
    return rpc_status.to_status(status_pb2.Status(code=number, message=message, details=details))


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, reason: Reason,
          metadata: Mapping[str, str] | None = None, fields: Iterable[tuple[str, str]] = ()) -> NoReturn:
    context.abort_with_status(status(code, message, reason, metadata, fields))
    raise AssertionError("unreachable: abort_with_status raises")


def _details(error: grpc.RpcError) -> list[any_pb2.Any]:
    if not isinstance(error, grpc.Call):
        return []
    rich = rpc_status.from_call(error)
    return list(rich.details) if rich is not None else []


def error_info(error: grpc.RpcError) -> tuple[str, dict[str, str]] | None:
    """(reason, metadata) of a GLS error, or None when the answer carries none (e.g. grpc's own limits)."""
    for detail in _details(error):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                return info.reason, dict(info.metadata)
    return None


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) for each bad field of an INVALID_ARGUMENT answer."""
    for detail in _details(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            return [(violation.field, violation.description) for violation in request.field_violations]
    return []
