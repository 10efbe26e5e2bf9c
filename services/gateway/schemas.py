"""Response models of the REST API (what OpenAPI documents; handlers return the Store's public dicts)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
