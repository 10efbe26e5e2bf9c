"""The errors a request can end in, shared by the REST and gRPC edges, each mapped to a status in one place.

:class:`InvalidRequest` is a :class:`~gls_core.errors.InvalidInput` naming one or more fields;
:class:`ApiError` carries the HTTP status it stands for (404, 409, 413, 503, ...). The REST mapping is
``services.gateway.errors``, the gRPC one ``services.grpc_errors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from gls_core.errors import InvalidInput

from .codec import quoted
from .store import JOBS_QUOTA, STORED_BYTES_QUOTA, OverQuota

MAX_REPORTED_ERRORS = 20
"""A body with a million NaNs gets the first 20 errors named, not a million-line answer."""


class ApiError(Exception):
    """An answer other than success: HTTP status plus a message (e.g. 404, 409, 413, 503)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON answer: :class:`ErrorBody`."""
        return {"detail": self.message}


class NotFoundError(ApiError):
    def __init__(self, kind: str, item_id: str) -> None:
        super().__init__(404, f"{kind} {quoted(item_id)} not found")


class Unavailable(ApiError):
    """A dependency (Redis, the bound workers) cannot serve the request now: 503 / UNAVAILABLE."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message)


class InvalidRequest(InvalidInput):
    """One or more fields are wrong; each entry is (dotted field path, reason). ``status``: 422, or 413 for a
    request over a size limit (INVALID_ARGUMENT over gRPC either way)."""

    def __init__(self, errors: Sequence[tuple[str, str]], status: int = 422) -> None:
        self.errors = list(errors)[:MAX_REPORTED_ERRORS]
        field, reason = self.errors[0]
        super().__init__(field, reason)
        self.args = ("; ".join(f"{field}: {reason}" for field, reason in self.errors),)
        self.status = status

    @classmethod
    def of(cls, error: InvalidInput) -> InvalidRequest:
        """``error`` as a request error (itself when it is one already)."""
        return error if isinstance(error, InvalidRequest) else cls(error.violations())

    def violations(self) -> list[tuple[str, str]]:
        return list(self.errors)

    def within(self, prefix: str) -> InvalidRequest:
        return InvalidRequest([(f"{prefix}.{field}", reason) for field, reason in self.errors], self.status)

    def __reduce__(self) -> tuple[Any, ...]:
        return (InvalidRequest, (self.errors, self.status))

    @classmethod
    def one(cls, field: str, reason: str, status: int = 422) -> InvalidRequest:
        return cls([(field, reason)], status)



class QuotaUsage(BaseModel):
    quota: str = Field(description=f"{JOBS_QUOTA} (queued or running jobs) or {STORED_BYTES_QUOTA} (bytes of "
                                   "uploaded models and datasets)")
    setting: str = Field(description="the gateway setting that sets the limit")
    limit: int = Field(description="the most the tenant may have")
    usage: int = Field(description="what the tenant has now")


QUOTA_SETTINGS = {JOBS_QUOTA: "GLS_TENANT_MAX_JOBS", STORED_BYTES_QUOTA: "GLS_TENANT_MAX_STORED_MB"}


def mebibytes(size: int) -> str:
    return f"{size / (1024 * 1024):.2f} MiB"


def quota_message(error: OverQuota) -> str:
    """What a refused request is told: the quota, the usage, the limit and the setting, in words."""
    setting = QUOTA_SETTINGS[error.quota]
    if error.quota == JOBS_QUOTA:
        return (f"tenant {error.tenant} has {error.usage} queued or running jobs; the limit is {error.limit} "
                f"({setting}); cancel one or wait until one finishes")
    return (f"tenant {error.tenant} stores {error.usage} bytes ({mebibytes(error.usage)}) of uploaded models and "
            f"datasets; this upload needs {error.requested} bytes more, over the limit of {error.limit} bytes "
            f"({mebibytes(error.limit)}, {setting}); delete models or datasets you no longer need")


class QuotaExceeded(ApiError):
    """A tenant's quota refuses the request (nothing was stored): 429, RESOURCE_EXHAUSTED over gRPC."""

    def __init__(self, error: OverQuota) -> None:
        super().__init__(429, quota_message(error))
        self.usage = QuotaUsage(quota=error.quota, setting=QUOTA_SETTINGS[error.quota], limit=error.limit,
                                usage=error.usage)

    def body(self) -> dict[str, Any]:
        return {**super().body(), "quota": self.usage.model_dump()}


STORAGE_FULL = ("storage (Redis) is full: it reached its maxmemory and evicts nothing, so nothing stored was "
                "lost; delete datasets or models you no longer need, or ask the operator to raise maxmemory")
