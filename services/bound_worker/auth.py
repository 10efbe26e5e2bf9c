"""A shared secret between the bound workers and their callers (the coordinator and the gateway).

With ``GLS_WORKER_TOKEN`` set, every BoundWorker RPC must carry ``authorization: Bearer <token>``;
others get UNAUTHENTICATED before any decoding or computing. Health and reflection stay open, so
probes and load balancers need no secret. ``gls cluster up`` draws a fresh token for each cluster.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

from .. import rich_status
from ..rich_status import Reason
from .service import SERVICE_NAME

PROTECTED = f"/{SERVICE_NAME}/"


class WorkerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            rich_status.abort(context, grpc.StatusCode.UNAUTHENTICATED,
                              "this bound worker needs 'authorization: Bearer <GLS_WORKER_TOKEN>' metadata",
                              Reason.UNAUTHENTICATED)

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        if not details.method.startswith(PROTECTED):
            return continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given_bytes, self._expected):
            return continuation(details)
        return self._refusal
