"""Assemble the FastAPI app: routers, the /ui dashboard, exception handlers, metrics middleware, OpenAPI details."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gls_core.training.config import TrainConfig

from . import certify_rest, datasets, health, jobs, models, quota, ui
from .bodies import BodySizeLimit, route_limits
from .context import Gateway
from .errors import install_handlers
from .events import STREAM_THREADS
from .metrics import MetricsMiddleware

TAGS = [
    {"name": "jobs", "description": "training jobs: submit, follow, cancel, fetch the trained model"},
    {"name": "datasets", "description": "a tenant's own training data (.npz / .safetensors with x and y)"},
    {"name": "models", "description": "GLS model files, uploaded or trained"},
    {"name": "quota", "description": "the tenant's quotas (queued or running jobs, stored bytes) and its usage"},
    {"name": "certify", "description": "certify inputs with a convex relaxation (also gRPC gls.v1.Certifier)"},
    {"name": "operations", "description": "health, readiness and Prometheus metrics (no token needed)"},
]


READ_BY_ROUTE: tuple[type[BaseModel], ...] = (TrainConfig, certify_rest.CertifyIn)
"""Bodies their routes read themselves (a job raw, a certify body streamed), so FastAPI does not see the models."""


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the models of :data:`READ_BY_ROUTE`."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                             tags=app.openapi_tags)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in READ_BY_ROUTE:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.stream_limiter = anyio.CapacityLimiter(STREAM_THREADS)  # belongs to this app's event loop
        yield

    app = FastAPI(title="GLS gateway", version="1", lifespan=lifespan, openapi_tags=TAGS,
                  description="Certified training with Gaussian Loss Smoothing. Every /v1 route needs "
                              "'Authorization: Bearer <token>'; a tenant sees only its own jobs, models and datasets.")
    app.state.gateway = gateway
    install_handlers(app)
    for module in (jobs, datasets, models, quota, certify_rest, health):
        app.include_router(module.router)
    ui.mount(app)  # the web dashboard at /ui/ (static files; the page calls /v1 with the user's token)
    app.add_middleware(BodySizeLimit, limits=route_limits(gateway.settings))
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics)  # outermost: counts every answer
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
