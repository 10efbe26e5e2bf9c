"""``POST /v1/certify``: certify inputs against a stored or inline model (JSON in, verdicts out).

The body is read as it arrives (:mod:`.json_arrays`): ``inputs``, ``labels`` and ``model.theta`` go
straight into numpy arrays, checked on the way, and the other fields are validated by
:class:`CertifyIn` as before. The gateway's memory grows by about the decoded arrays, not by the
Python lists a whole-body parse would make; a body over ``GLS_CERTIFY_MAX_BODY_MB`` is refused
before the rest of it is read (:mod:`.bodies`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic.config import JsonDict, JsonValue
from starlette.concurrency import run_in_threadpool

from gls_core.catalog import certify_methods
from gls_core.nets.zoo import ARCHITECTURES, DATASETS
from gls_core.relaxation_schema import request_fields

from ..settings import Settings
from .bodies import field_name, read_json
from .certify import (
    CHUNK,
    COMPLETE,
    CertifyTask,
    certify,
    check_complete_inputs,
    check_inputs,
    check_labels,
    check_spec,
    check_theta,
    complete_options,
    relaxation,
    stored_model,
    zoo_model,
)
from .deps import ID_PATTERN, PROTECTED, GatewayDep, Tenant
from .errors import InvalidRequest, error_responses
from .json_arrays import ArrayField, Parsed, Path, TooManyItems

router = APIRouter(tags=["certify"], responses=PROTECTED)
METHOD_NAMES: list[JsonValue] = list(certify_methods())
PIXELS_DESCRIPTION = "[B, C, H, W] pixels in [0, 1]; C, H and W those the model takes, B at most GLS_CERTIFY_MAX_INPUTS"
PIXEL: JsonDict = {"type": "number", "minimum": 0, "maximum": 1}
PIXELS: JsonDict = {"type": "array", "minItems": 1, "description": PIXELS_DESCRIPTION,
                    "items": {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": PIXEL}}}}
EXACTLY_ONE_MODEL: list[JsonValue] = [{"required": ["model_id"], "properties": {"model_id": {"type": "string"}}},
                                      {"required": ["model"], "properties": {"model": {"type": "object"}}}]
"""The schema's form of 'give exactly one of model_id and model' (a null one counts as not given)."""
EXAMPLE: JsonDict = {"model": {"arch": "fc-1", "dataset": "digits", "theta": [0.0] * 85},
                     "inputs": [[[[0.5] * 8] * 8]], "labels": [3], "eps": 0.01, "relaxation": "deeppoly"}
"""A whole request: fc-1 on digits (64 -> 1 -> 10, 85 parameters), one 1 x 8 x 8 input."""
ARCH_PATTERN = f"^({'|'.join(sorted(ARCHITECTURES, key=len, reverse=True))}|fc-[0-9]+(x[0-9]+)*)$"


def _name_or_object(schema: JsonDict) -> None:
    """``relaxation`` takes a method name as well as the object (see ``CertifyIn._method_name``)."""
    ref = schema.pop("$ref")
    schema["anyOf"] = [{"type": "string", "enum": METHOD_NAMES}, {"$ref": ref}]


class StrictBody(BaseModel):
    """Unknown fields and NaN/Infinity are errors, never silently dropped or computed with.

    Numbers are ``StrictFloat``/``StrictInt``: JSON ``true`` or ``"0.5"`` is not a number (the schema says so too).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InlineModel(StrictBody):
    arch: str = Field(max_length=64, description="cnn3-tiny, cnn3, cnn5, cnn5-l, cnn7 or fc-WxW",
                      json_schema_extra={"pattern": ARCH_PATTERN})
    dataset: str = Field(max_length=64, description="the built-in dataset fixing input shape and classes",
                         json_schema_extra={"enum": list(DATASETS)})
    theta: list[StrictFloat] = Field(description="flat parameters in parameters_to_vector order (as many as the "
                                                 "architecture has for the dataset)")


class RelaxationIn(create_model(  # type: ignore[misc]  # the options are their records' (gls_core.relaxations)
        "RelaxationFields", __base__=StrictBody,
        method=(str, Field("deeppoly", max_length=32, description=", ".join(map(str, METHOD_NAMES)),
                           json_schema_extra={"enum": METHOD_NAMES})),
        **request_fields(),
        timeout=(StrictFloat | None, Field(None, gt=0, description="complete: seconds per input (default and "
                                                                   "cap: GLS_CERTIFY_COMPLETE_TIMEOUT_S, "
                                                                   "_MAX_TIMEOUT_S)")))):
    """A method and its options; which options a method takes is checked by its record."""


class CertifyIn(StrictBody):
    """Exactly one of ``model_id`` and ``model``. Rules that depend on the model (the inputs' shape, labels below
    its number of classes) or cross fields (one label per input, options only for the method that takes them,
    timeout only for complete) are checked by the server and answered 422 naming the field."""

    model_config = ConfigDict(json_schema_extra={"oneOf": EXACTLY_ONE_MODEL, "examples": [EXAMPLE]})

    model_id: str | None = Field(None, pattern=ID_PATTERN, description="a model of this tenant (uploaded or trained)")
    model: InlineModel | None = Field(None, description="or the model itself")
    inputs: list[list[list[list[StrictFloat]]]] = Field(description=PIXELS_DESCRIPTION, json_schema_extra=PIXELS)
    labels: list[StrictInt] = Field(description="[B] true classes, one per input",
                                    json_schema_extra={"minItems": 1, "items": {"type": "integer", "minimum": 0}})
    eps: float = Field(ge=0, description="L_inf radius (the region is clipped to [0, 1])")
    relaxation: RelaxationIn = Field(default_factory=RelaxationIn,
                                     description="a method name, or an object with method and alpha options",
                                     json_schema_extra=_name_or_object)

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


INPUTS, LABELS, THETA = ("inputs",), ("labels",), ("model", "theta")
RAGGED = "ragged: every input must have the same [C, H, W] shape"
CERTIFY_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/CertifyIn"}}}}}
"""The body is read by the route, so FastAPI documents it only through this (app.py adds CertifyIn's schema)."""


def body_arrays(max_inputs: int) -> dict[Path, ArrayField]:
    """The arrays of a certify body read into numpy: the rest of the body is small."""
    return {INPUTS: ArrayField(4, StrictFloat, np.float32, max_inputs, RAGGED),
            LABELS: ArrayField(1, StrictInt, np.int64, max_inputs),
            THETA: ArrayField(1, StrictFloat, np.float32)}


async def read_body(request: Request, settings: Settings) -> tuple[CertifyIn, dict[Path, np.ndarray]]:
    """The body's fields (its arrays left empty) and its arrays, or the errors that name every bad field."""
    try:
        body = await read_json(request, body_arrays(settings.certify_max_inputs))
    except TooManyItems as error:
        reason = (f"more than the limit of {error.limit} per request (GLS_CERTIFY_MAX_INPUTS; stream larger sets "
                  "with CertifyStream)")
        raise InvalidRequest.one(field_name(error.path), reason, status=413) from None
    return _validated(body.parsed)


def _validated(parsed: Parsed) -> tuple[CertifyIn, dict[Path, np.ndarray]]:
    errors = [{**error, "loc": ("body", *error["loc"])} for error in parsed.errors]
    try:
        body = CertifyIn.model_validate(parsed.document)
    except ValidationError as error:
        errors += [{**item, "loc": ("body", *item["loc"])} for item in error.errors()]
    if errors:
        raise RequestValidationError(errors)
    return body, parsed.arrays


def task_from_body(gateway: GatewayDep, tenant: str, body: CertifyIn, arrays: dict[Path, np.ndarray]) -> CertifyTask:
    if (body.model_id is None) == (body.model is None):
        raise InvalidRequest.one("model_id", "give exactly one of model_id (a stored model) and model (inline)")
    if body.model_id is not None:
        spec, theta = stored_model(gateway.store, tenant, body.model_id)
    else:
        assert body.model is not None
        spec = zoo_model(body.model.arch, body.model.dataset, "model")
        theta = check_theta(spec, torch.from_numpy(arrays[THETA]), "model.theta")
    check_spec(spec, "model")
    x = check_inputs(spec, torch.from_numpy(arrays[INPUTS]), gateway.settings.certify_max_inputs)
    y = check_labels(torch.from_numpy(arrays[LABELS]), x.shape[0], spec.num_outputs)
    options = body.relaxation.model_dump(exclude={"method", "timeout"}, exclude_none=True)
    if body.relaxation.method == COMPLETE:
        if options:
            raise InvalidRequest.one("relaxation", f"{sorted(options)} are not options of the complete method")
        check_complete_inputs(x.shape[0], gateway.settings)
        options = complete_options(body.relaxation.timeout, gateway.settings)
        return CertifyTask(spec, theta, x, y, body.eps, COMPLETE, options)  # eps: checked by CertifyIn
    if body.relaxation.timeout is not None:
        raise InvalidRequest.one("relaxation.timeout", "only applies to the complete method")
    method, options = relaxation(body.relaxation.method, options)
    return CertifyTask(spec, theta, x, y, body.eps, method, options)


VERDICTS: TypeAdapter[list[VerdictOut]] = TypeAdapter(list[VerdictOut])


def _certify(gateway: GatewayDep, tenant: str, body: CertifyIn, arrays: dict[Path, np.ndarray]) -> list[bytes]:
    """The answer as JSON pieces: each slice of verdicts is serialised as soon as it is decided, so no more than
    one slice's worth of Python objects lives at a time (a whole answer of them is ~8x its JSON)."""
    task = task_from_body(gateway, tenant, body, arrays)
    gateway.metrics.certify_inputs.labels("rest", task.method).inc(task.x.shape[0])
    total, count, pieces = task.x.shape[0], 0, list[bytes]()
    for start in range(0, total, CHUNK):
        part = slice(start, min(start + CHUNK, total))
        eps = task.eps[part] if isinstance(task.eps, torch.Tensor) else task.eps
        verdicts = certify(gateway.pool, replace(task, x=task.x[part], y=task.y[part], eps=eps), offset=start)
        count += sum(verdict.certified for verdict in verdicts)
        listed = VERDICTS.dump_json(VERDICTS.validate_python([verdict.public() for verdict in verdicts]))
        pieces.append((b"," if pieces else b"") + listed[1:-1])
    gateway.metrics.certified_inputs.labels("rest", task.method).inc(count)
    head, tail = CertifyOut(verdicts=[], certified=count, total=total, method=task.method,
                            eps=float(body.eps)).model_dump_json().encode().split(b"[]", 1)
    return [head + b"[", *pieces, b"]" + tail]


@router.post("/v1/certify", response_model=CertifyOut, openapi_extra=CERTIFY_BODY,
             responses=error_responses(
                 (400, "the body is not JSON text (e.g. not UTF-8)"),
                 (404, "model_id is not a model of this tenant (another tenant's ids answer exactly the same)"),
                 (413, "the body is larger than GLS_CERTIFY_MAX_BODY_MB, or holds more inputs "
                       "than GLS_CERTIFY_MAX_INPUTS (GLS_CERTIFY_COMPLETE_MAX_INPUTS for the complete method)"),
                 (422, "a field is invalid, alone or with the model (shapes, classes, the theta length) or other "
                       "fields; detail names it"),
                 502, (503, "no bound worker is live, the workers are busy, or Redis is unavailable; retry shortly")))
async def certify_inputs(request: Request, gateway: GatewayDep, tenant: Tenant) -> StreamingResponse:
    """Certify each input at radius eps with a convex relaxation computed by the bound workers."""
    body, arrays = await read_body(request, gateway.settings)
    pieces = await run_in_threadpool(_certify, gateway, tenant, body, arrays)

    async def answer() -> AsyncIterator[bytes]:
        while pieces:
            yield pieces.pop(0)  # each piece is let go once sent

    return StreamingResponse(answer(), media_type="application/json")
