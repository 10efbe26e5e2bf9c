"""The REST error mapping: every exception a route can end in, as one JSON shape and status, in one place.

The errors themselves are protocol-neutral (``services.errors``, ``gls_core.errors``; gRPC maps the
same ones in ``services.grpc_errors``): an :class:`~gls_core.errors.InvalidInput` (a request error
naming one or more fields) is 422 (413 for a size limit) with one ``detail`` entry per field; an
:class:`ApiError` its own status; the Store's :class:`~services.store.OverQuota` 429. Anything else
is a bug: it is logged with an incident id and answered with a JSON 500 that leaks nothing.

Every REST error body has the one shape :class:`ErrorBody`; routes declare the statuses they can
answer with :func:`error_responses`, so the OpenAPI schema lists each of them with that body.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gls_core.errors import InvalidInput

from ..errors import (
    MAX_REPORTED_ERRORS,
    QUOTA_SETTINGS,
    STORAGE_FULL,
    ApiError,
    InvalidRequest,
    NotFoundError,
    QuotaExceeded,
    QuotaUsage,
    Unavailable,
    quota_message,
)
from ..store import OverQuota

__all__ = ["MAX_REPORTED_ERRORS", "QUOTA_SETTINGS", "STORAGE_FULL", "ApiError", "ErrorBody",
           "InvalidRequest", "NotFoundError", "QuotaExceeded", "QuotaUsage", "Unavailable", "error_responses",
           "install_handlers", "quota_message"]

log = logging.getLogger("services.gateway")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path or header, then the path inside it")
    field: str = Field(description="the dotted field path ('body' for the body as a whole)")
    msg: str = Field(description="the reason, in words")
    type: str = Field(description="a machine-readable kind: 'value_error' or a pydantic error type")


class ErrorBody(BaseModel):
    """The body of every error answer: a message, or (for invalid fields) one entry per field."""

    detail: str | list[FieldError]
    quota: QuotaUsage | None = Field(None, description="on 429 only: the quota the request would exceed")


REASONS = {
    400: "the body cannot be parsed (e.g. malformed multipart)",
    401: "missing, malformed or unknown bearer token",
    404: "no such item for this tenant (another tenant's ids answer exactly the same)",
    409: "the item is not ready for this request",
    413: "the body is larger than this route's limit (GLS_MAX_UPLOAD_MB for uploads, GLS_MAX_BODY_KB for a job "
         "config), or an upload decodes to more than GLS_UPLOAD_MAX_DECODED_MB",
    422: "a field is invalid; detail names each field and the reason",
    429: "a quota of this tenant would be exceeded (GLS_TENANT_MAX_*); detail and quota say which, the limit and "
         "the usage; nothing was stored",
    502: "a bound worker gave an answer that cannot be used",
    503: "a dependency is unavailable (Redis, or no live bound worker) or storage is full; retry later",
}
STORED_QUOTA = (429, "the upload would take the tenant's uploaded models and datasets past GLS_TENANT_MAX_STORED_MB "
                     "(what it stores already: GET /v1/quota); nothing was stored")
"""The 429 of the upload routes."""
HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait (when Redis is unavailable)", "schema": {"type": "string"}}},
}


def error_responses(*statuses: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers, each with :class:`ErrorBody`.

    A status alone takes the standard reason; ``(status, reason)`` says what it means for this route.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for item in statuses:
        status, reason = item if isinstance(item, tuple) else (item, REASONS[item])
        responses[status] = {"model": ErrorBody, "description": reason, **({"headers": HEADERS[status]}
                                                                            if status in HEADERS else {})}
    return responses


def dotted(loc: Iterable[Any]) -> str:
    """('body', 'inputs', 0, 3) -> 'inputs.0.3' (the request part is implied by the route)."""
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_detail(error: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's errors without ``input``/``ctx`` (they may hold NaN or whole bodies), plus a dotted ``field``."""
    detail = []
    for item in list(error.errors())[:MAX_REPORTED_ERRORS]:
        loc = [part if isinstance(part, int | str) else str(part) for part in item.get("loc", ())]
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if item.get("type") == "extra_forbidden":
            message = "unknown field"
        elif item.get("type") == "json_invalid":
            reason = (item.get("ctx") or {}).get("error", "")
            message = f"malformed JSON at character {loc[-1]}: {reason}" if reason else "malformed JSON"
            loc = ["body"]
        detail.append({"loc": loc, "field": dotted(loc), "msg": message, "type": str(item.get("type", ""))})
    return detail


def field_detail(error: InvalidInput) -> list[dict[str, Any]]:
    """One :class:`FieldError` per bad field of ``error``, located in the body."""
    return [{"loc": ["body"] if field == "body" else ["body", *field.split(".")], "field": field, "msg": reason,
             "type": "value_error"} for field, reason in error.violations()[:MAX_REPORTED_ERRORS]]


HTTP_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette's 405 names only the first route whose path matched
    (``GET`` for ``/v1/jobs/{id}``, though ``DELETE`` is served there too). Each method is tried on the router,
    which sees through included routers."""
    routes = request.app.router.routes
    return ", ".join(method for method in HTTP_METHODS
                     if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes))


def install_handlers(app: FastAPI) -> None:
    """Map every error to JSON; unexpected ones are logged with an id and answered without internals."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(error)}, status_code=422)

    @app.exception_handler(InvalidInput)
    async def _invalid_field(request: Request, error: InvalidInput) -> JSONResponse:
        status = error.status if isinstance(error, InvalidRequest) else 422
        return JSONResponse({"detail": field_detail(error)}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(OverQuota)
    async def _over_quota(request: Request, error: OverQuota) -> JSONResponse:
        return await _api_error(request, QuotaExceeded(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(error, "headers", None) or {})
        if error.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=headers or None)

    @app.exception_handler(redis.exceptions.OutOfMemoryError)
    async def _redis_full(request: Request, error: redis.RedisError) -> JSONResponse:
        log.error("redis is full on %s %s: %s", request.method, request.url.path, error)
        return JSONResponse({"detail": STORAGE_FULL}, status_code=503, headers={"Retry-After": "60"})

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _redis_down(request: Request, error: redis.RedisError) -> JSONResponse:
        log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, error)
        return JSONResponse({"detail": "storage (Redis) unavailable; retry shortly"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(Exception)  # reached only from the middlewares outside UnexpectedErrors
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        return internal_error(request.method, request.url.path, error)

    app.add_middleware(UnexpectedErrors)  # the first one added: innermost, right outside the routes' handlers


def internal_error(method: str, path: str, error: BaseException) -> JSONResponse:
    """A bug: logged with its traceback under a new incident id, answered 500 with only that id."""
    incident = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s %s", incident, method, path, exc_info=error)
    return JSONResponse({"detail": f"internal error (incident {incident}; the server log has the details)"},
                        status_code=500)


class UnexpectedErrors:
    """Answers an unexpected exception with :func:`internal_error` and ends the request there.

    A handler registered for ``Exception`` alone runs in Starlette's outermost middleware, which sends the 500
    and then raises the error again, so that the server sees it; uvicorn then closes the connection, and the
    client's next request on that keep-alive connection fails (ECONNRESET). Caught here, the error is answered
    like any other and the connection stays usable. An error after the answer has started (a stream cut off)
    still propagates: that connection cannot carry another answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as error:
            if started:
                raise
            await internal_error(str(scope.get("method", "")), str(scope.get("path", "")), error)(scope, receive, send)
