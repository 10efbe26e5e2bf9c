"""``POST /v1/certify``: certify inputs against a stored or inline model (JSON in, verdicts out)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from .certify import (
    COMPLETE,
    CertifyTask,
    certify,
    check_complete_inputs,
    check_eps,
    check_inputs,
    check_labels,
    check_spec,
    check_theta,
    complete_options,
    relaxation,
    stored_model,
    zoo_model,
)
from .deps import GatewayDep, Tenant
from .errors import InvalidRequest

router = APIRouter(tags=["certify"])


class Strict(BaseModel):
    """Unknown fields and NaN/Infinity are errors, never silently dropped or computed with."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InlineModel(Strict):
    arch: str = Field(max_length=64, description="cnn3-tiny, cnn3, cnn5, cnn5-l, cnn7 or fc-WxW")
    dataset: str = Field(max_length=64, description="the built-in dataset fixing input shape and classes")
    theta: list[float] = Field(description="flat parameters in parameters_to_vector order")


class RelaxationIn(Strict):
    method: str = Field("deeppoly", max_length=32,
                        description="ibp, hbox, crown-ibp, deeppoly (crown), alpha-crown or complete")
    steps: StrictInt | None = Field(None, ge=0, le=1000, description="alpha-crown slope steps (default 20)")
    step_size: float | None = Field(None, ge=0, description="alpha-crown step size (default 0.1)")
    init: float | str | None = Field(
        None, description="alpha-crown initial slopes: 'deeppoly' (default) or a constant in [0, 1]")
    timeout: float | None = Field(None, gt=0, description="complete: seconds per input (default and cap: settings)")


class CertifyIn(Strict):
    model_id: str | None = Field(None, max_length=200, description="a model of this tenant (uploaded or trained)")
    model: InlineModel | None = Field(None, description="or the model itself")
    inputs: list[list[list[list[float]]]] = Field(description="[B, C, H, W] pixels in [0, 1]")
    labels: list[StrictInt] = Field(description="[B] true classes")
    eps: float = Field(ge=0, description="L_inf radius (the region is clipped to [0, 1])")
    relaxation: RelaxationIn = Field(default_factory=RelaxationIn,
                                     description="a method name, or an object with method and alpha options")

    @field_validator("eps", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a JSON number, got {type(value).__name__}")  # no "0.1" or true
        return value

    @field_validator("relaxation", mode="before")
    @classmethod
    def _method_name(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value


class VerdictOut(BaseModel):
    index: int
    predicted: int
    correct: bool = Field(description="the clean input is classified as its label (strictly)")
    certified: bool = Field(description="correct and every margin upper bound < 0 (complete: verified)")
    worst_margin: float | None = Field(description="max over i != label of the upper bound of y_i - y_label "
                                                   "(complete: minus the best bound, null when none is known)")
    margin_upper: list[float] = Field(description="upper bounds of y_i - y_label for i != label, in class order "
                                                  "(empty for the complete method)")
    status: str | None = Field(None, description="complete: verified, falsified or unknown")
    seconds: float | None = Field(None, description="complete: time the branch and bound took")


class CertifyOut(BaseModel):
    verdicts: list[VerdictOut]
    certified: int
    total: int
    method: str
    eps: float


def task_from_body(gateway: GatewayDep, tenant: str, body: CertifyIn) -> CertifyTask:
    if (body.model_id is None) == (body.model is None):
        raise InvalidRequest.one("model_id", "give exactly one of model_id (a stored model) and model (inline)")
    if body.model_id is not None:
        spec, theta = stored_model(gateway.store, tenant, body.model_id)
    else:
        assert body.model is not None
        spec = zoo_model(body.model.arch, body.model.dataset, "model")
        theta = check_theta(spec, torch.tensor(body.model.theta, dtype=torch.float32), "model.theta")
    check_spec(spec, "model")
    try:
        array = np.asarray(body.inputs, dtype=np.float32)
    except ValueError:
        raise InvalidRequest.one("inputs", "ragged: every input must have the same [C, H, W] shape") from None
    x = check_inputs(spec, torch.from_numpy(array), gateway.settings.certify_max_inputs)
    y = check_labels(torch.tensor(body.labels, dtype=torch.int64), x.shape[0], spec.num_outputs)
    if body.relaxation.method == COMPLETE:
        if any(value is not None for value in (body.relaxation.steps, body.relaxation.step_size, body.relaxation.init)):
            raise InvalidRequest.one("relaxation", "steps, step_size and init only apply to alpha-crown")
        check_complete_inputs(x.shape[0], gateway.settings)
        options = complete_options(body.relaxation.timeout, gateway.settings)
        return CertifyTask(spec, theta, x, y, check_eps(body.eps), COMPLETE, options)
    if body.relaxation.timeout is not None:
        raise InvalidRequest.one("relaxation.timeout", "only applies to the complete method")
    options = body.relaxation.model_dump(exclude={"method", "timeout"}, exclude_none=True)
    method, options = relaxation(body.relaxation.method, options)
    return CertifyTask(spec, theta, x, y, check_eps(body.eps), method, options)


@router.post("/v1/certify", response_model=CertifyOut,
             responses={404: {"description": "model_id is not a model of this tenant"},
                        413: {"description": "more inputs than GLS_CERTIFY_MAX_INPUTS"},
                        422: {"description": "a field is invalid; detail names it"},
                        503: {"description": "no bound worker is live"}})
def certify_inputs(body: CertifyIn, gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    """Certify each input at radius eps with a convex relaxation computed by the bound workers."""
    task = task_from_body(gateway, tenant, body)
    gateway.metrics.certify_inputs.labels("rest", task.method).inc(task.x.shape[0])
    verdicts = certify(gateway.pool, task)
    count = sum(verdict.certified for verdict in verdicts)
    gateway.metrics.certified_inputs.labels("rest", task.method).inc(count)
    return {"verdicts": [verdict.public() for verdict in verdicts], "certified": count, "total": len(verdicts),
            "method": task.method, "eps": float(body.eps)}
