"""Unauthenticated operational routes: liveness, readiness (Redis answers), Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from .deps import GatewayDep
from .schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz() -> dict[str, str]:
    """The process serves HTTP (a liveness probe: restart it if this fails)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(gateway: GatewayDep) -> JSONResponse:
    """Ready when Redis answers (jobs, models and datasets all live there); reports the live bound workers.

    Workers are reported, not required: job and data routes work without them and workers scale
    independently; ``/v1/certify`` answers 503 by itself while none is live.
    """
    try:
        gateway.redis.ping()
    except Exception as error:  # any Redis failure means: not ready
        body = Readiness(status="unavailable", redis=False, workers=0, detail=f"redis unreachable: {error}")
        return JSONResponse(body.model_dump(), status_code=503)
    workers = len(gateway.pool.addresses())
    return JSONResponse(Readiness(status="ready", redis=True, workers=workers).model_dump())


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(gateway: GatewayDep) -> Response:
    """Prometheus text exposition of this gateway's metrics."""
    return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
