"""Certification, shared by ``POST /v1/certify`` and the gRPC Certifier: validate, bound remotely, judge.

The verdict is the one ``gls_core.evaluation.certify`` gives: an input is certified when it is
correctly classified (its target logit beats every other one, strictly) and every upper bound of
the margins y_i - y_t over the input region is below 0. The clean forward pass runs here (it is
cheap); the bounds are computed by the bound workers through ``WorkerPool.bounds``. Options left
out take the method's evaluation defaults (its record in ``gls_core.relaxations``), so a bare method
name certifies what ``gls evaluate`` certifies.

Every check is one of gls_core's validators (or a service limit) and raises
:class:`~gls_core.errors.InvalidInput` naming the field (``inputs``, ``labels.3``, ...), so the REST
and gRPC edges report the same problems in their own way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import torch
from pydantic import ValidationError
from safetensors.torch import load as load_tensors

from gls_core import validation
from gls_core.attacks import logit_margin, predict_logits
from gls_core.bounds.layerwise import check_supported
from gls_core.errors import InvalidInput
from gls_core.evaluation import COMPLETE
from gls_core.nets.spec import NetSpec
from gls_core.nets.zoo import network
from gls_core.relaxations import check_relaxation
from gls_core.training.config import ModelConfig
from gls_core.validation import check_params

from ..codec import relaxation_to_proto
from ..settings import Settings
from ..store import NotFound, Store
from ..worker_client import NoWorkersError, WorkerPool, WorkerRejectedError
from .errors import ApiError, InvalidRequest, NotFoundError, Unavailable

CHUNK = 1024
"""Inputs per call to the workers (each call is split across all of them): bounds request sizes and memory."""
NO_WORKERS = "no bound worker is live: certification needs at least one (start services.bound_worker)"


@dataclass(frozen=True)
class CertifyTask:
    """A certification request, every field checked where it entered (REST body or gRPC message)."""

    spec: NetSpec
    theta: torch.Tensor  # [D] float32
    x: torch.Tensor  # [B, *input_shape] float32 in [0, 1]
    y: torch.Tensor  # [B] int64
    eps: float | torch.Tensor  # a radius, or one per input [B]
    method: str
    options: dict[str, Any]


@dataclass(frozen=True)
class InputVerdict:
    index: int
    predicted: int
    correct: bool
    certified: bool
    worst_margin: float | None  # max_i upper(y_i - y_t); complete: minus the bound, None when none is known
    margin_upper: list[float]  # upper(y_i - y_t), i != t in class order (empty for the complete method)
    status: str | None = None  # complete: verified, falsified or unknown
    seconds: float | None = None  # complete: time the branch and bound took

    def public(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- checks

def complete_options(timeout: float | None, settings: Settings, field: str = "relaxation.timeout") -> dict[str, Any]:
    """The complete method's options: its per-input time limit, defaulted and capped by the settings."""
    if timeout is None or timeout == 0:
        return {"timeout": settings.certify_complete_timeout_s}
    cap = settings.certify_complete_max_timeout_s
    if not math.isfinite(timeout) or not 0 < timeout <= cap:
        raise InvalidRequest.one(field, f"must be seconds in (0, {cap:g}] (GLS_CERTIFY_COMPLETE_MAX_TIMEOUT_S), "
                                        f"got {timeout!r}")
    return {"timeout": float(timeout)}


def check_complete_inputs(count: int, settings: Settings, field: str = "inputs") -> None:
    """The complete method costs up to its time limit per input: a request carries at most the configured number."""
    limit = settings.certify_complete_max_inputs
    if count > limit:
        raise InvalidRequest.one(field, f"{count} inputs, more than the limit of {limit} per request for the complete "
                                        "method (GLS_CERTIFY_COMPLETE_MAX_INPUTS; send them in several)", status=413)


def relaxation(method: str, options: dict[str, Any], field: str = "relaxation") -> tuple[str, dict[str, Any]]:
    """The method and all its options, with a server's limits; those left out take evaluation's defaults."""
    method, values = check_relaxation(method, options, field, served=True, evaluating=True)
    try:
        relaxation_to_proto(method, values)  # what the bound workers are sent must be representable
    except InvalidInput as error:
        raise InvalidRequest.one(field, f"cannot be sent to the bound workers: {error.reason}") from None
    return method, values


def check_spec(spec: NetSpec, field: str) -> None:
    try:
        check_supported(spec)
    except ValueError as error:
        raise InvalidRequest.one(field, f"not a network the relaxations support: {error}") from None
    if spec.num_outputs < 2:
        raise InvalidRequest.one(field, f"the network has {spec.num_outputs} output; certification needs >= 2 classes")


def check_theta(spec: NetSpec, theta: torch.Tensor, field: str) -> torch.Tensor:
    return check_params(spec, theta, field, flat=True)[0].to(torch.float32).contiguous()


def check_inputs(spec: NetSpec, x: torch.Tensor, limit: int, field: str = "inputs") -> torch.Tensor:
    """gls_core's checks, after the per-request limit (413: cheap, and before the values are looked at)."""
    if x.dim() > 0 and x.shape[0] > limit:
        raise InvalidRequest.one(field, f"{x.shape[0]} inputs, more than the limit of {limit} per request "
                                        "(GLS_CERTIFY_MAX_INPUTS; stream larger sets with CertifyStream)", status=413)
    return validation.check_inputs(spec, x, field).to(torch.float32).contiguous()


def check_labels(y: torch.Tensor, batch: int, classes: int, field: str = "labels") -> torch.Tensor:
    return validation.check_labels(y, batch, classes, field)


def check_radii(eps: torch.Tensor, batch: int, field: str) -> torch.Tensor:
    """One radius per input, [batch] float32 (``validation.check_eps`` also takes one for all)."""
    if eps.dim() != 1:  # one radius per input: a scalar tensor is no list of radii
        raise InvalidRequest.one(field, f"need one radius per input ({batch}), got shape {list(eps.shape)}")
    validation.check_eps(eps, batch, field)
    return eps.to(torch.float32)


# ------------------------------------------------------------------------------------------- models

def zoo_model(arch: str, dataset: str, field: str) -> NetSpec:
    try:
        ModelConfig(arch=arch)  # the names a training config accepts (fc-WxW with digits only)
    except ValidationError as error:
        raise InvalidRequest.one(f"{field}.arch", error.errors()[0]["msg"].removeprefix("Value error, ")) from None
    try:
        return network(arch, dataset)
    except (ValueError, TypeError) as error:
        key = "dataset" if "dataset" in str(error) else "arch"
        raise InvalidRequest.one(f"{field}.{key}", str(error)) from None


def stored_model(store: Store, tenant: str, model_id: str) -> tuple[NetSpec, torch.Tensor]:
    """A model of this tenant; another tenant's id is reported exactly like a missing one."""
    try:
        info = store.model_info(model_id, tenant)
        data = store.model_data(model_id, tenant)
    except NotFound:
        raise NotFoundError("model", model_id) from None
    spec = network(info.arch, info.dataset)
    theta = load_tensors(data)["theta"].to(torch.float32)
    return spec, check_theta(spec, theta, "model_id")


# ---------------------------------------------------------------------------------------- computing

@contextmanager
def _worker_errors() -> Iterator[None]:
    """The bound workers' failures as the API's errors."""
    try:
        yield
    except NoWorkersError as error:
        raise Unavailable(f"{NO_WORKERS}; {error}") from None
    except WorkerRejectedError as error:
        if error.code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidRequest.one("body", f"rejected by the bound worker: {error.details}") from None
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise Unavailable(f"the bound workers are busy, retry later ({error.details})") from None
        # Anything else is the workers' side (e.g. UNAUTHENTICATED: the gateway's GLS_WORKER_TOKEN is not
        # theirs): a bad gateway, named, not an internal error of this server.
        hint = " (GLS_WORKER_TOKEN differs between the gateway and the workers)" \
            if error.code == grpc.StatusCode.UNAUTHENTICATED else ""
        raise ApiError(502, f"a bound worker refused the request: {error.code.name} {error.details}{hint}") from None


def _bounds(pool: WorkerPool, task: CertifyTask, part: slice) -> torch.Tensor:
    eps = task.eps[part] if isinstance(task.eps, torch.Tensor) else task.eps
    with _worker_errors():
        _, upper = pool.bounds(task.spec, task.theta, task.x[part], task.y[part], eps, task.method, task.options)
    if upper.shape != (part.stop - part.start, task.spec.num_outputs - 1):
        raise ApiError(502, f"a bound worker answered bounds of shape {list(upper.shape)}")
    return upper


def verify_stream(pool: WorkerPool, task: CertifyTask, offset: int = 0) -> Iterator[InputVerdict]:
    """The complete method: each input decided by a worker's branch and bound, yielded in order as decided."""
    if not pool.addresses():
        raise Unavailable(NO_WORKERS)
    with torch.no_grad():
        logits = predict_logits(task.spec, task.theta, task.x)
    correct = logit_margin(logits, task.y) < 0
    predicted = logits.argmax(dim=-1)
    with _worker_errors():
        for i, answer in enumerate(pool.verify(task.spec, task.theta, task.x, task.y, task.eps,
                                               task.options["timeout"])):
            bound = -answer.bound if math.isfinite(answer.bound) else None
            yield InputVerdict(offset + i, int(predicted[i]), bool(correct[i]),
                          bool(correct[i]) and answer.status == "verified", bound, [], answer.status,
                          answer.seconds)


def certify(pool: WorkerPool, task: CertifyTask, offset: int = 0) -> list[InputVerdict]:
    """Verdicts for every input of ``task``, indexed from ``offset`` (a stream's position)."""
    if task.method == COMPLETE:
        return list(verify_stream(pool, task, offset))
    if not pool.addresses():
        raise Unavailable(NO_WORKERS)
    verdicts: list[InputVerdict] = []
    batch = task.x.shape[0]
    for start in range(0, batch, CHUNK):
        part = slice(start, min(start + CHUNK, batch))
        x, y = task.x[part], task.y[part]
        with torch.no_grad():
            logits = predict_logits(task.spec, task.theta, x)  # [b, classes]
        correct = logit_margin(logits, y) < 0
        predicted = logits.argmax(dim=-1)
        upper = _bounds(pool, task, part)  # [b, classes - 1]
        certified = correct & (upper < 0).all(dim=-1)
        worst = upper.max(dim=-1).values
        for i, row in enumerate(upper.tolist()):
            verdicts.append(InputVerdict(offset + start + i, int(predicted[i]), bool(correct[i]), bool(certified[i]),
                                    float(worst[i]), row))
    return verdicts
