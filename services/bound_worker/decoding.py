"""Turn BoundWorker requests into validated gls_core arguments, resolving blobs through the cache.

Everything a request could get wrong is checked here, before any computation, and reported as a
``ValueError`` naming the field; a blob named only by a hash this worker does not hold raises
:class:`MissingBlobError` (FAILED_PRECONDITION: the caller resends it inline).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gls_core.bounds.layerwise import check_supported
from gls_core.nets.spec import NetSpec
from gls_core.training.estimators import Proposal
from gls_core.training.objective import Objective
from gls_core.training.points import block_ranges

from ..codec import (
    SHA256_HEX,
    content_hash,
    objective_from_proto,
    proposal_from_request,
    quoted,
    relaxation_from_proto,
    require_finite,
    spec_from_proto,
    tensor_from_proto,
)
from ..proto.gls.v1 import bound_worker_pb2
from .cache import BlobCache

FLOATS = ("float32", "float64")
INTEGERS = ("int64",)
MAX_MEMBERS = 1 << 16
"""Members one request may evaluate (16 x GLS_JOB_MAX_POPSIZE's default): the range is walked block by block, so
a range of billions is work and memory without bound, not a step of any job."""


class MissingBlobError(LookupError):
    def __init__(self, sha256: str) -> None:
        super().__init__(f"missing blob {sha256}")
        self.sha256 = sha256


@dataclass(frozen=True)
class PointsJob:
    spec: NetSpec
    proposal: Proposal
    objective: Objective
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    seed: int
    block: int
    start: int
    stop: int


@dataclass(frozen=True)
class BoundsJob:
    spec: NetSpec
    params: torch.Tensor
    x: torch.Tensor
    labels: torch.Tensor | None
    eps: float | torch.Tensor
    method: str
    options: dict[str, Any]


@dataclass(frozen=True)
class VerifyJob:
    """Complete verification runs on the CPU in float64 (the MILP leaves are solved there anyway)."""

    spec: NetSpec
    params: torch.Tensor  # [D]
    x: torch.Tensor
    labels: torch.Tensor
    eps: float | torch.Tensor
    timeout: float


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def check_eps(field: str, eps: float) -> float:
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{field} must be finite and >= 0, got {eps}")
    return float(eps)


def check_inputs(field: str, x: torch.Tensor, spec: NetSpec) -> None:
    expected = tuple(spec.input_shape)
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"{field} must have shape [B, {', '.join(map(str, expected))}] for {spec.name}, "
                         f"got {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{field} is an empty batch")
    require_finite(field, x)
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError(f"{field} must lie in [0, 1] (pixel space, before normalisation)")


def check_labels(field: str, y: torch.Tensor, batch: int, classes: int) -> None:
    if tuple(y.shape) != (batch,):
        raise ValueError(f"{field} must have shape [{batch}] (one label per input), got {list(y.shape)}")
    if bool((y < 0).any()) or bool((y >= classes).any()):
        raise ValueError(f"{field} must lie in [0, {classes}), got min {int(y.min())} and max {int(y.max())}")


class RequestDecoder:
    """Decodes requests for one worker: its blob cache and the device tensors are moved to."""

    def __init__(self, cache: BlobCache, device: torch.device) -> None:
        self.cache = cache
        self.device = device

    def blob(self, blob: bound_worker_pb2.Blob, field: str, dtypes: Sequence[str]) -> torch.Tensor:
        """The tensor of an inline blob (cached under its hash) or of a hash this worker holds."""
        if blob.sha256 and not SHA256_HEX.match(blob.sha256):
            raise ValueError(f"{field}.sha256 must be 64 lowercase hex digits, got {quoted(blob.sha256)}")
        if blob.HasField("tensor"):
            key = content_hash(blob.tensor)
            if blob.sha256 and blob.sha256 != key:
                raise ValueError(f"{field}.sha256 {blob.sha256} does not match its tensor (content hash {key})")
            tensor = self.cache.get(key)
            if tensor is None:
                tensor = tensor_from_proto(blob.tensor, field, dtypes=dtypes)
                self.cache.put(key, tensor)
        elif blob.sha256:
            cached = self.cache.get(blob.sha256)
            if cached is None:
                raise MissingBlobError(blob.sha256)
            tensor = cached
        else:
            raise ValueError(f"{field} is missing (set its tensor, or the sha256 of one sent before)")
        if _dtype_name(tensor) not in dtypes:
            raise ValueError(f"{field} must have dtype {' or '.join(dtypes)}, got {_dtype_name(tensor)}")
        return tensor

    def _spec(self, request: bound_worker_pb2.PointsRequest | bound_worker_pb2.BoundsRequest
              | bound_worker_pb2.VerifyRequest) -> NetSpec:
        if not request.HasField("spec"):
            raise ValueError("spec is missing")
        return spec_from_proto(request.spec)

    def _inputs(self, blob: bound_worker_pb2.Blob, spec: NetSpec) -> torch.Tensor:
        x = self.blob(blob, "inputs", FLOATS)
        check_inputs("inputs", x, spec)
        return x

    def points(self, request: bound_worker_pb2.PointsRequest) -> PointsJob:
        spec = self._spec(request)
        if not request.HasField("objective"):
            raise ValueError("objective is missing")
        objective = objective_from_proto(request.objective)
        if request.want_gradients and not objective.differentiable:
            raise ValueError(f"want_gradients: {objective.method} has no weight gradients (use PGPE, losses only)")
        eps = check_eps("eps", request.eps)
        if request.block < 1:
            raise ValueError(f"block must be >= 1, got {request.block}")
        if request.count < 1 or (request.symmetric and request.count % 2):
            raise ValueError(f"count must be positive (and even when symmetric), got {request.count}")
        if request.start >= request.stop:
            raise ValueError(f"member range start={request.start} stop={request.stop} is empty")
        if request.stop > request.count:
            raise ValueError(f"member range start={request.start} stop={request.stop} exceeds count={request.count}")
        if request.stop - request.start > MAX_MEMBERS:
            raise ValueError(f"member range start={request.start} stop={request.stop} has more than {MAX_MEMBERS} "
                             "members (split it over several requests)")
        try:
            block_ranges(request.count, request.block, request.start, request.stop)
        except ValueError as error:
            raise ValueError(f"start/stop: {error}") from None
        centre = self.blob(request.centre, "centre", FLOATS)
        if tuple(centre.shape) != (spec.num_params,):
            raise ValueError(f"centre must have shape [{spec.num_params}] (theta of {spec.name}), "
                             f"got {list(centre.shape)}")
        require_finite("centre", centre)
        sigma = self.blob(request.sigma, "sigma", FLOATS)
        if sigma.shape != centre.shape or sigma.dtype != centre.dtype:
            raise ValueError(f"sigma must match centre ({list(centre.shape)} {_dtype_name(centre)}), "
                             f"got {list(sigma.shape)} {_dtype_name(sigma)}")
        require_finite("sigma", sigma)
        if bool((sigma < 0).any()):
            raise ValueError("sigma must be >= 0 (a standard deviation per parameter)")
        x = self._inputs(request.inputs, spec)
        if x.dtype != centre.dtype:  # the members are centre's dtype, and a forward pass needs one dtype
            raise ValueError(f"inputs must have the dtype of centre ({_dtype_name(centre)}), got {_dtype_name(x)}")
        y = self.blob(request.labels, "labels", INTEGERS)
        check_labels("labels", y, x.shape[0], spec.num_outputs)
        proposal = proposal_from_request(request, centre.to(self.device), sigma.to(self.device))
        return PointsJob(spec, proposal, objective, x.to(self.device), y.to(self.device), eps, int(request.seed),
                         int(request.block), int(request.start), int(request.stop))

    def _perturbation(self, request: bound_worker_pb2.BoundsRequest | bound_worker_pb2.VerifyRequest,
                      batch: int) -> float | torch.Tensor:
        eps: float | torch.Tensor = check_eps("perturbation.eps", request.perturbation.eps)
        if request.perturbation.HasField("eps_per_input"):
            radii = tensor_from_proto(request.perturbation.eps_per_input, "perturbation.eps_per_input",
                                      dtypes=FLOATS)
            if tuple(radii.shape) != (batch,):
                raise ValueError(f"perturbation.eps_per_input must have shape [{batch}], got {list(radii.shape)}")
            require_finite("perturbation.eps_per_input", radii)
            if bool((radii < 0).any()):
                raise ValueError("perturbation.eps_per_input must be >= 0")
            eps = radii
        return eps

    def verify(self, request: bound_worker_pb2.VerifyRequest, max_timeout: float) -> VerifyJob:
        spec = self._spec(request)
        try:  # the branch and bound bounds the layouts the relaxations take
            check_supported(spec)
        except ValueError as error:
            raise ValueError(f"spec: {error}") from None
        params = self.blob(request.params, "params", FLOATS)
        if tuple(params.shape) != (spec.num_params,):
            raise ValueError(f"params must have shape [{spec.num_params}] for {spec.name}, got {list(params.shape)}")
        require_finite("params", params)
        x = self._inputs(request.inputs, spec)
        labels = self.blob(request.labels, "labels", INTEGERS)
        check_labels("labels", labels, x.shape[0], spec.num_outputs)
        if spec.num_outputs < 2:
            raise ValueError(f"labels: robustness needs at least 2 outputs, {spec.name} has {spec.num_outputs}")
        timeout = request.timeout_seconds
        if not math.isfinite(timeout) or not 0 < timeout <= max_timeout:
            raise ValueError(f"timeout_seconds must lie in (0, {max_timeout:g}] (GLS_VERIFY_MAX_TIMEOUT_S), "
                             f"got {timeout!r}")
        return VerifyJob(spec, params, x, labels, self._perturbation(request, x.shape[0]), float(timeout))

    def bounds(self, request: bound_worker_pb2.BoundsRequest) -> BoundsJob:
        spec = self._spec(request)
        if not request.HasField("relaxation"):
            raise ValueError("relaxation is missing")
        method, options = relaxation_from_proto(request.relaxation)
        params = self.blob(request.params, "params", FLOATS)
        if params.dim() not in (1, 2) or params.shape[-1] != spec.num_params or params.numel() == 0:
            raise ValueError(f"params must have shape [{spec.num_params}] or [P, {spec.num_params}] for {spec.name}, "
                             f"got {list(params.shape)}")
        require_finite("params", params)
        x = self._inputs(request.inputs, spec)
        labels = None
        if request.HasField("labels"):
            labels = self.blob(request.labels, "labels", INTEGERS)
            check_labels("labels", labels, x.shape[0], spec.num_outputs)
            if spec.num_outputs < 2:
                raise ValueError(f"labels: margins need at least 2 outputs, {spec.name} has {spec.num_outputs}")
        eps = self._perturbation(request, x.shape[0])
        if isinstance(eps, torch.Tensor):
            eps = eps.to(self.device)
        return BoundsJob(spec, params.to(self.device), x.to(self.device),
                         None if labels is None else labels.to(self.device), eps, method, options)
