"""Response models of the REST API (what OpenAPI documents; handlers return the Store's public dicts)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .errors import QuotaUsage


class JobOut(BaseModel):
    id: str
    tenant: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    config: dict[str, Any] = Field(description="the validated training config, defaults filled in")
    created: float
    updated: float
    name: str = ""
    step: int = 0
    total_steps: int = Field(0, description="0 until the coordinator has planned the job")
    error: str = ""
    coordinator: str = ""
    cancel_requested: bool = False
    model_id: str = Field("", description="the trained model (GET /v1/jobs/{id}/model) once the job succeeded")
    note: str = Field("", description="why a queued job is waiting again: it yielded its turn to another tenant "
                                      "(fair scheduling); cleared when it runs again")
    members_done: int = Field(0, description="population members evaluated in the step in progress, of `members` "
                                             "(written once a step has run for a second)")
    members: int = Field(0, description="members of the step in progress (0 until a step has run for a second)")


class DatasetOut(BaseModel):
    id: str
    tenant: str
    name: str
    n: int
    shape: list[int]
    num_classes: int
    dtype: str
    created: float
    chunks: int = 0
    source: str = ""


class ModelOut(BaseModel):
    id: str
    tenant: str
    arch: str
    dataset: str
    num_params: int
    created: float
    source: str = ""
    extra: dict[str, str] = Field(default_factory=dict)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready or unavailable")
    redis: bool
    workers: int = Field(description="bound workers registered (certification needs at least one)")
    detail: str = ""


class QuotaOut(BaseModel):
    """The calling tenant's limits and what it uses of them now."""

    tenant: str
    jobs: QuotaUsage = Field(description="queued or running jobs (GLS_TENANT_MAX_JOBS)")
    stored_bytes: QuotaUsage = Field(description="bytes of uploaded models and datasets (GLS_TENANT_MAX_STORED_MB); "
                                                 "trained models are not counted")
