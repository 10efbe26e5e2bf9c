"""Request bodies within limits: a size limit per route, enforced before a route reads anything, and one JSON
reader (:mod:`.json_arrays`) for every route that takes JSON.

Each route has exactly one size limit (:func:`route_limits`): the uploads ``GLS_MAX_UPLOAD_MB``, ``POST
/v1/certify`` ``GLS_CERTIFY_MAX_BODY_MB`` and every other route (a job config, and the routes that take no body)
``GLS_MAX_BODY_KB``. A body over it is answered 413 naming the limit and its setting, with ``Connection: close``:
at once when Content-Length says so, else as soon as the bytes received pass it, so the rest is never read.
JSON is then read as it arrives, 1 MiB at a time in a worker thread, within the reader's limits on depth,
string length, items and values; nothing is parsed whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ApiError
from ..settings import Settings
from .json_arrays import ArrayField, JsonArrayReader, JsonLimits, MalformedJson, Parsed, Path

KIB, MIB = 1024, 1024 * 1024
FEED_BYTES = 1 << 20
"""Bytes gathered from the stream before the parser runs on them (in a worker thread, off the event loop)."""
DEFAULT_LIMITS = JsonLimits()
UPLOAD_ROUTES = ("/v1/datasets", "/v1/models")
CERTIFY_ROUTE = "/v1/certify"


@dataclass(frozen=True)
class BodyLimit:
    """The largest body of a route, and the setting that configures it."""

    bytes: int
    setting: str
    hint: str = ""

    @property
    def size(self) -> str:
        return f"{self.bytes // MIB} MiB" if self.bytes % MIB == 0 else f"{self.bytes // KIB} KiB"

    def message(self, method: str, path: str) -> str:
        hint = f"; {self.hint}" if self.hint else ""
        return f"request body larger than the limit of {self.size} for {method} {path} ({self.setting}{hint})"


@dataclass(frozen=True)
class RouteLimits:
    uploads: BodyLimit
    certify: BodyLimit
    other: BodyLimit

    def of(self, method: str, path: str) -> BodyLimit:
        path = path.rstrip("/") or "/"
        if method == "POST" and path in UPLOAD_ROUTES:
            return self.uploads
        if method == "POST" and path == CERTIFY_ROUTE:
            return self.certify
        return self.other


def route_limits(settings: Settings) -> RouteLimits:
    return RouteLimits(
        uploads=BodyLimit(settings.max_upload_mb * MIB, "GLS_MAX_UPLOAD_MB"),
        certify=BodyLimit(settings.certify_max_body_mb * MIB, "GLS_CERTIFY_MAX_BODY_MB",
                          "send more inputs in several requests or stream them with the gRPC CertifyStream"),
        other=BodyLimit(settings.max_body_kb * KIB, "GLS_MAX_BODY_KB"))


class BodySizeLimit:
    """413 (JSON, ``Connection: close``) for a body over its route's limit: at once when Content-Length says so,
    else when the bytes received pass it (raised from ``receive``, so the route stops reading there).

    (FastAPI's own ``max_body_size`` answers a declared oversize body in plain text, whatever the app says.)
    """

    def __init__(self, app: ASGIApp, limits: RouteLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = str(scope.get("method", "")), str(scope.get("path", ""))
        limit = self.limits.of(method, path)
        headers = {"Connection": "close"}
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit.bytes:
            response = JSONResponse({"detail": limit.message(method, path)}, status_code=413, headers=headers)
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:  # reaches the exception handlers like any HTTPException
                    raise StarletteHTTPException(413, limit.message(method, path), headers)
            return message

        await self.app(scope, counted, send)


def json_media(content_type: str | None) -> bool:
    """What FastAPI reads as JSON: no Content-Type, application/json or application/*+json."""
    if not content_type:
        return True
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def field_name(path: Path) -> str:
    return ".".join(map(str, path)) or "body"


def malformed(error: MalformedJson) -> Exception:
    """A body the reader stopped on, as the answer naming where."""
    if error.encoding:
        return ApiError(400, f"the body is not UTF-8 JSON text: {error.reason} (in {field_name(error.path)})")
    if error.at_value:
        return RequestValidationError([{"type": "value_error", "loc": ("body", *error.path), "msg": error.reason}])
    where = f" in {field_name(error.path)}" if error.path else ""
    return RequestValidationError([{"type": "value_error", "loc": ("body",),
                                    "msg": f"malformed JSON{where}: {error.reason}"}])


@dataclass
class JsonBody:
    parsed: Parsed
    text: bytes  # the body's bytes when asked for (small bodies only), else b""


async def read_json(request: Request, arrays: Mapping[Path, ArrayField] | None = None, *,
                    keep_text: bool = False, limits: JsonLimits = DEFAULT_LIMITS) -> JsonBody:
    """The body as it arrives, read within ``limits`` (``arrays`` straight into numpy); 422/400 naming the field
    where it stops. The size limit is :class:`BodySizeLimit`'s. A reader's :class:`~.json_arrays.TooManyItems`
    passes through for the route to answer."""
    if not json_media(request.headers.get("content-type")):
        raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": "expected Content-Type "
                                       f"application/json, got {request.headers['content-type']!r}"}])
    reader = JsonArrayReader(arrays or {}, limits)
    pending, text = bytearray(), bytearray()
    try:
        async for chunk in request.stream():
            pending += chunk
            if keep_text:
                text += chunk
            if len(pending) >= FEED_BYTES:
                await run_in_threadpool(reader.feed, bytes(pending))
                pending.clear()
        parsed = await run_in_threadpool(_finish, reader, bytes(pending))
    except MalformedJson as error:
        raise malformed(error) from None
    return JsonBody(parsed, bytes(text))


def _finish(reader: JsonArrayReader, rest: bytes) -> Parsed:
    reader.feed(rest)
    if not reader.received:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    return reader.finish()
