"""``/v1/quota``: the calling tenant's quotas (GLS_TENANT_MAX_*) and its usage, counted from Redis as the
submit and upload routes count them, so a client can see how much room is left before a 429."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..store import JOBS_QUOTA, STORED_BYTES_QUOTA
from .deps import PROTECTED, GatewayDep, Tenant
from .errors import QUOTA_SETTINGS
from .schemas import QuotaOut

router = APIRouter(prefix="/v1/quota", tags=["quota"], responses=PROTECTED)


@router.get("", response_model=QuotaOut)
def get_quota(gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    """Limits and usage of this tenant: queued or running jobs, and bytes of uploaded models and datasets."""
    settings, store = gateway.settings, gateway.store
    usage = {JOBS_QUOTA: (settings.tenant_max_jobs, store.active_job_count(tenant)),
             STORED_BYTES_QUOTA: (settings.tenant_max_stored_bytes, store.stored_bytes(tenant))}
    return {"tenant": tenant, **{quota: {"quota": quota, "setting": QUOTA_SETTINGS[quota], "limit": limit,
                                         "usage": used} for quota, (limit, used) in usage.items()}}
