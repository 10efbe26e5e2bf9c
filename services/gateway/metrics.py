"""Prometheus metrics of one gateway: HTTP and gRPC requests, submitted jobs, certified inputs.

Each gateway owns its registry (not the process-global one), so several gateways in one test
process do not collide and ``/metrics`` shows exactly this gateway's numbers.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def tenant_label(tenant: str, key: str) -> str:
    """The tenant's label on /metrics, which is unauthenticated: HMAC-SHA256 of its name under the deployment's
    secret ``key`` (GLS_METRICS_KEY), so only who holds the key can tell which tenant a series is; without a key,
    empty (Prometheus reads an empty label as absent: one series for all tenants). An unkeyed hash would let
    anyone confirm a tenant name they guess."""
    if not key:
        return ""
    return hmac.new(key.encode(), tenant.encode(), hashlib.sha256).hexdigest()[:16]


class GatewayMetrics:
    def __init__(self, key: str = "") -> None:
        self.key = key
        self.registry = CollectorRegistry()
        self.requests = Counter("gls_gateway_http_requests_total", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("gls_gateway_http_request_seconds", "HTTP request latency by route template",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.grpc_requests = Counter("gls_gateway_grpc_requests_total", "Certifier RPCs by method and status code",
                                     ["method", "code"], registry=self.registry)
        self.grpc_latency = Histogram("gls_gateway_grpc_request_seconds", "Certifier RPC latency", ["method"],
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.jobs_submitted = Counter("gls_gateway_jobs_submitted_total",
                                      "training jobs accepted, by tenant pseudonym (HMAC under GLS_METRICS_KEY; "
                                      "empty without one)", ["tenant"], registry=self.registry)
        self.certify_inputs = Counter("gls_gateway_certify_inputs_total", "inputs sent for certification",
                                      ["api", "method"], registry=self.registry)
        self.certified_inputs = Counter("gls_gateway_certified_inputs_total", "inputs certified",
                                        ["api", "method"], registry=self.registry)
        self.upload_bytes = Counter("gls_gateway_upload_bytes_total", "bytes of accepted uploads", ["kind"],
                                    registry=self.registry)
        self.live_workers = Gauge("gls_gateway_live_workers", "bound workers the gateway can reach",
                                  registry=self.registry)

    def tenant(self, tenant: str) -> str:
        return tenant_label(tenant, self.key)

    def track_workers(self, count: Callable[[], int]) -> None:
        """Report the worker count at scrape time (a Redis read per scrape, none otherwise)."""

        def safe() -> float:
            try:
                return float(count())
            except Exception:  # Redis down: the gauge says nothing rather than failing the scrape
                return float("nan")

        self.live_workers.set_function(safe)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (streams pass through untouched): counts and times every HTTP request by route template."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # templates only: bounded labels
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
