"""``/v1/jobs``: submit, list, inspect and cancel training jobs; their metrics, live events and model.

The coordinator fills in ``total_steps``, advances ``step`` and stores the final model under
``Job.model_id``. ``GET /v1/jobs/{id}/model`` serves that final model; while a job runs (or after
it failed), ``?latest=true`` serves the weights of its latest acknowledged checkpoint instead, as
the same GLS model file with the checkpoint's step in the metadata. Without either: 409.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from starlette.concurrency import run_in_threadpool

from gls_core.training.checkpoint import FORMAT
from gls_core.training.config import TrainConfig
from gls_core.training.plots import render_curves

from ..store import Job, NotFound
from .bodies import read_json
from .context import Gateway
from .deps import PROTECTED, GatewayDep, JobId, Tenant, leave_out
from .errors import ApiError, InvalidRequest, NotFoundError, error_responses
from .events import finite, job_events
from .jobcheck import validate_job
from .schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=PROTECTED)
SAFETENSORS = "application/octet-stream"
CONFIG_SCHEMA = {"$ref": "#/components/schemas/TrainConfig"}
CONFIG_EXAMPLE = {"name": "digits-ibp", "estimator": "grad", "relaxation": "ibp", "eps": 0.05,
                  "data": {"dataset": "digits", "batch_size": 32}, "model": {"arch": "fc-16"},
                  "schedule": {"epochs": 1, "eps_ramp_epochs": 0, "lr": 0.01, "lr_milestones": []}}
CONFIG_BODY = {"requestBody": {"required": True, "description": "a training config (the YAML schema, as JSON)",
                               "content": {"application/json": {"schema": CONFIG_SCHEMA, "example": CONFIG_EXAMPLE}}}}
STREAM_ID = r"^\d{1,19}(-\d{1,19})?$"
"""A Redis stream id (ms-seq); 19 digits stay below Redis' 64-bit limit, so no id of this form makes Redis fail."""
STREAM_ID_SCHEMA = leave_out({"type": "string", "pattern": STREAM_ID})
NO_JOB = (404, "no such job for this tenant (another tenant's ids answer exactly the same)")
LOCATION = {"Location": {"description": "the path of the new job", "required": True, "schema": {"type": "string"}}}
LAX_TYPES = {"int_type": "an integer", "float_type": "a number", "bool_type": "a boolean"}
JOB = {"job_id": "$response.body#/id"}
CREATED = {name: {"operationRef": f"#/paths/~1v1~1jobs~1{{job_id}}{suffix}", "parameters": JOB}
           for name, suffix in [("get", "/get"), ("cancel", "/delete"), ("metrics", "~1metrics/get"),
                                ("events", "~1events/get"), ("curves", "~1curves.png/get"), ("model", "~1model/get")]}
FINAL_STATUS = {"job": {"operationRef": "#/paths/~1v1~1jobs~1{job_id}/get", "parameters": JOB,
                        "description": "the cancelled job stays readable and answers its final status"}}


def _job(gateway: Gateway, tenant: str, job_id: str) -> Job:
    try:
        return gateway.store.get_job(job_id, tenant)
    except NotFound:
        raise NotFoundError("job", job_id) from None


def _integral(error: Any) -> bool:
    """An integer field given 3.0: JSON Schema counts that as an integer too."""
    return error["type"] == "int_type" and isinstance(error["input"], float) and error["input"].is_integer()


def _coerced(raw: bytes) -> list[tuple[str, str]]:
    """Values the config's lax parsing would convert although the schema calls them the wrong type.

    ``TrainConfig`` is shared with ``gls train``, whose YAML it reads leniently: ``true`` becomes 1 and ``"0.1"``
    becomes 0.1. A JSON client sending those has a bug the schema names, so the edge refuses them. An integral
    float such as ``3.0`` is an integer to JSON Schema too, and stays accepted.
    """
    try:
        TrainConfig.model_validate_json(raw, strict=True, context={"strict": True})  # the relaxations' sections too
    except ValidationError as error:
        return [(".".join(str(part) for part in item["loc"]),
                 f"must be {LAX_TYPES[item['type']]}, got {json.dumps(item['input'])[:40]}")
                for item in error.errors() if item["type"] in LAX_TYPES and not _integral(item)]
    return []


def _submit(gateway: Gateway, tenant: str, body: Any, raw: bytes) -> dict[str, Any]:
    coerced = _coerced(raw) if isinstance(body, dict) else []
    try:
        config = validate_job(gateway.store, tenant, body, gateway.settings)
    except InvalidRequest as error:
        named = {field for field, _ in error.errors}
        raise InvalidRequest(error.errors + [item for item in coerced if item[0] not in named], error.status) from None
    if coerced:
        raise InvalidRequest(coerced)
    job = gateway.store.submit_job(tenant, config.model_dump(mode="json"), name=config.name or "",
                                   max_active=gateway.settings.tenant_max_jobs)
    gateway.metrics.jobs_submitted.labels(gateway.metrics.tenant(tenant)).inc()
    return job.public()


@router.post("", status_code=201, response_model=JobOut, openapi_extra=CONFIG_BODY,
             responses={201: {"headers": LOCATION, "links": CREATED}, **error_responses(
                 (413, "the body is larger than GLS_MAX_BODY_KB"),
                 (422, "the config is invalid: a field breaks its schema, a rule across fields (the eps ramp "
                            "and lr milestones within the schedule, a batch that fits the data), a cap of this "
                            "gateway (GLS_JOB_MAX_*), or names a dataset or model this tenant does not have; "
                            "detail names each field and the reason"),
                 (429, "the tenant already has GLS_TENANT_MAX_JOBS queued or running jobs (finished, failed and "
                       "cancelled ones do not count); nothing was queued"))})
async def submit_job(request: Request, response: Response, gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    """Queue a training job. ``total_steps`` stays 0 until a coordinator claims the job.

    A tenant may have at most GLS_TENANT_MAX_JOBS jobs queued or running at once (GET /v1/quota says how many it
    has); a running job counts until it has stopped, also after a cancel.
    """
    body = await read_json(request, keep_text=True)  # within GLS_MAX_BODY_KB (BodySizeLimit) and JsonLimits
    job = await run_in_threadpool(_submit, gateway, tenant, body.parsed.document, body.text)
    response.headers["Location"] = f"{router.prefix}/{job['id']}"
    return job


@router.get("", response_model=list[JobOut])
def list_jobs(gateway: GatewayDep, tenant: Tenant) -> list[dict[str, Any]]:
    """This tenant's jobs, oldest first."""
    return [job.public() for job in gateway.store.list_jobs(tenant)]


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(NO_JOB, 422))
def get_job(job_id: JobId, gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    return _job(gateway, tenant, job_id).public()


@router.delete("/{job_id}", response_model=JobOut,
               responses={200: {"description": "the job, cancelled or finished", "links": FINAL_STATUS},
                          **error_responses(NO_JOB, 422)})
def cancel_job(job_id: JobId, gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    """Cancel the job; it is not deleted. A queued job is cancelled at once, a running one after its current step
    (``cancel_requested`` is true meanwhile), a finished one is unchanged; cancelling again is harmless. The job
    record stays: ``GET /v1/jobs/{job_id}`` and its metrics, events, curves and latest checkpoint keep answering,
    with the final status.
    """
    try:
        return gateway.store.request_cancel(job_id, tenant).public()
    except NotFound:
        raise NotFoundError("job", job_id) from None


@router.get("/{job_id}/metrics", response_model=list[dict[str, Any]], responses=error_responses(NO_JOB, 422))
def job_metrics(job_id: JobId, gateway: GatewayDep, tenant: Tenant,
                start: Annotated[int, Query(ge=0, le=2**63 - 1,
                                            description="skip the first rows (poll with the count seen)")] = 0
                ) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl acknowledged so far (non-finite values as null)."""
    _job(gateway, tenant, job_id)
    return [finite(row) for row in gateway.store.metrics(job_id, start)]


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "events (metrics, status, ...) with Redis stream ids; a final 'end'"},
                       **error_responses(NO_JOB, 422)})
async def job_event_stream(job_id: JobId, request: Request, gateway: GatewayDep, tenant: Tenant,
                           last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=STREAM_ID,
                                                                       description="resume after this id"),
                                                    STREAM_ID_SCHEMA] = None,
                           after: Annotated[str | None, Query(pattern=STREAM_ID, description="resume after this id "
                                                              "(for EventSource clients that cannot set headers)"),
                                            STREAM_ID_SCHEMA] = None
                           ) -> StreamingResponse:
    """Server-sent events: the job's history, then live progress; ends when the job has finished."""
    resume = last_event_id or after or "0-0"
    job = await run_in_threadpool(_job, gateway, tenant, job_id)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(job_events(gateway, job, resume, request.app.state.stream_limiter),
                             media_type="text/event-stream", headers=headers)


@router.get("/{job_id}/curves.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "loss, accuracy, eps/lr (and sigma) curves"},
                       **error_responses(NO_JOB, 422)})
def job_curves(job_id: JobId, gateway: GatewayDep, tenant: Tenant) -> Response:
    """The job's training curves drawn from the metrics acknowledged so far (as `gls train` writes curves.png)."""
    job = _job(gateway, tenant, job_id)
    try:
        config: TrainConfig | None = TrainConfig.model_validate(job.config)
    except ValueError:  # a config stored by an older gateway: draw without the labels it would give
        config = None
    png = render_curves([finite(row) for row in gateway.store.metrics(job_id, 0)], config)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


def _checkpoint_model(gateway: Gateway, job: Job) -> bytes | None:
    """The latest checkpoint's theta as a GLS model file, or None when there is none (or it holds no theta)."""
    stored = gateway.store.checkpoint(job.id)
    if stored is None:
        return None
    state, position = stored
    try:
        theta = load_tensors(state)["theta"]
        config = TrainConfig.model_validate(job.config)
    except Exception:  # a coordinator's private state format we cannot read: nothing to serve
        return None
    metadata = {"format": FORMAT, "arch": config.model.arch, "dataset": config.zoo_dataset,
                "num_params": str(theta.numel()), "step": str(position.get("step", "")), "job": job.id}
    return save_tensors({"theta": theta.contiguous()}, metadata)


@router.get("/{job_id}/model", response_class=Response,
            responses={200: {"content": {SAFETENSORS: {}}, "description": "model.safetensors (theta + metadata)"},
                       **error_responses(NO_JOB, (409, "the job has no model yet (and, with latest=true, no "
                                                       "checkpoint either)"), 422)})
def job_model(job_id: JobId, gateway: GatewayDep, tenant: Tenant,
              latest: Annotated[bool, Query(description="while no final model exists, serve the latest "
                                                        "checkpoint's weights")] = False) -> Response:
    """The trained model (a GLS model.safetensors), once the job has stored it."""
    job = _job(gateway, tenant, job_id)
    data: bytes | None = None
    if job.model_id:
        try:
            data = gateway.store.model_data(job.model_id, tenant)
        except NotFound:
            data = None
    if data is None and latest:
        data = _checkpoint_model(gateway, job)
    if data is None:
        hint = "" if latest else "; ?latest=true serves the latest checkpoint while it runs"
        raise ApiError(409, f"job {job_id!r} has no model yet (status {job.status.value}{hint})")
    disposition = f'attachment; filename="{job_id}.safetensors"'
    return Response(data, media_type=SAFETENSORS, headers={"Content-Disposition": disposition})
