"""Turn BoundWorker requests into validated gls_core arguments, resolving blobs through the cache.

Everything a request could get wrong is checked here, before any computation, with gls_core's
validators and reported as :class:`~gls_core.errors.InvalidInput` naming the wire field; a blob named
only by a hash this worker does not hold raises :class:`MissingBlobError` (FAILED_PRECONDITION: the
caller resends it inline). Any other exception out of here is a bug (INTERNAL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gls_core.bounds import KernelPlan
from gls_core.bounds.layerwise import check_supported
from gls_core.errors import InvalidInput
from gls_core.nets.spec import NetSpec
from gls_core.training.estimators import Proposal
from gls_core.training.objective import Objective
from gls_core.training.points import block_ranges
from gls_core.validation import (
    check_count,
    check_eps,
    check_finite,
    check_inputs,
    check_labels,
    check_members,
    check_params,
    check_radius,
)

from ..codec import (
    SHA256_HEX,
    content_hash,
    objective_from_proto,
    proposal_from_request,
    quoted,
    relaxation_from_proto,
    spec_from_proto,
    tensor_from_proto,
)
from ..grpc_errors import MissingBlobError
from ..proto.gls.v1 import bound_worker_pb2
from .cache import BlobCache

FLOATS = ("float32", "float64")
INTEGERS = ("int64",)
MAX_MEMBERS = 1 << 16
"""Members one request may evaluate (16 x GLS_JOB_MAX_POPSIZE's default): the range is walked block by block, so
a range of billions is work and memory without bound, not a step of any job."""


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
    kernel_plan: KernelPlan | None  # None: choose as this worker is configured, and answer the choices


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


class RequestDecoder:
    """Decodes requests for one worker: its blob cache and the device tensors are moved to."""

    def __init__(self, cache: BlobCache, device: torch.device) -> None:
        self.cache = cache
        self.device = device

    def blob(self, blob: bound_worker_pb2.Blob, field: str, dtypes: Sequence[str]) -> torch.Tensor:
        """The tensor of an inline blob (cached under its hash) or of a hash this worker holds."""
        if blob.sha256 and not SHA256_HEX.match(blob.sha256):
            raise InvalidInput(f"{field}.sha256", f"must be 64 lowercase hex digits, got {quoted(blob.sha256)}")
        if blob.HasField("tensor"):
            key = content_hash(blob.tensor)
            if blob.sha256 and blob.sha256 != key:
                raise InvalidInput(f"{field}.sha256", f"{blob.sha256} does not match its tensor (content hash {key})")
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
            raise InvalidInput(field, "is missing (set its tensor, or the sha256 of one sent before)")
        if _dtype_name(tensor) not in dtypes:
            raise InvalidInput(field, f"must have dtype {' or '.join(dtypes)}, got {_dtype_name(tensor)}")
        return tensor

    def _spec(self, request: bound_worker_pb2.PointsRequest | bound_worker_pb2.BoundsRequest
              | bound_worker_pb2.VerifyRequest) -> NetSpec:
        if not request.HasField("spec"):
            raise InvalidInput("spec", "is missing")
        return spec_from_proto(request.spec)

    def _inputs(self, blob: bound_worker_pb2.Blob, spec: NetSpec) -> torch.Tensor:
        return check_inputs(spec, self.blob(blob, "inputs", FLOATS), "inputs")

    def points(self, request: bound_worker_pb2.PointsRequest) -> PointsJob:
        spec = self._spec(request)
        if not request.HasField("objective"):
            raise InvalidInput("objective", "is missing")
        objective = objective_from_proto(request.objective)
        if request.want_gradients and not objective.differentiable:
            raise InvalidInput("want_gradients", f"{objective.method} has no weight gradients (use PGPE, losses only)")
        eps = check_radius(request.eps, "eps")
        check_count(request.block, "block")
        check_count(request.count, "count")
        if request.symmetric and request.count % 2:
            raise InvalidInput("count", f"must be even for symmetric pairs, got {request.count}", request.count)
        check_members(request.start, request.stop, request.count, MAX_MEMBERS)
        block_ranges(request.count, request.block, request.start, request.stop)  # aligned to blocks
        centre = check_params(spec, self.blob(request.centre, "centre", FLOATS), "centre", flat=True)[0]
        sigma = self.blob(request.sigma, "sigma", FLOATS)
        if sigma.shape != centre.shape or sigma.dtype != centre.dtype:
            raise InvalidInput("sigma", f"must match centre ({list(centre.shape)} {_dtype_name(centre)}), "
                                        f"got {list(sigma.shape)} {_dtype_name(sigma)}")
        if bool((check_finite(sigma, "sigma") < 0).any()):
            raise InvalidInput("sigma", "must be >= 0 (a standard deviation per parameter)")
        x = self._inputs(request.inputs, spec)
        if x.dtype != centre.dtype:  # the members are centre's dtype, and a forward pass needs one dtype
            raise InvalidInput("inputs", f"must have the dtype of centre ({_dtype_name(centre)}), got {_dtype_name(x)}")
        y = check_labels(self.blob(request.labels, "labels", INTEGERS), x.shape[0], spec.num_outputs, "labels")
        proposal = proposal_from_request(request, centre.to(self.device), sigma.to(self.device))
        plan = dict(request.kernel_plan.choices) if request.HasField("kernel_plan") else None
        return PointsJob(spec, proposal, objective, x.to(self.device), y.to(self.device), eps, int(request.seed),
                         int(request.block), int(request.start), int(request.stop), plan)

    def _perturbation(self, request: bound_worker_pb2.BoundsRequest | bound_worker_pb2.VerifyRequest,
                      batch: int) -> float | torch.Tensor:
        eps: float | torch.Tensor = check_radius(request.perturbation.eps, "perturbation.eps")
        if request.perturbation.HasField("eps_per_input"):
            field = "perturbation.eps_per_input"
            eps = tensor_from_proto(request.perturbation.eps_per_input, field, dtypes=FLOATS)
            if eps.dim() != 1:  # one radius per input: a scalar tensor is no list of radii
                raise InvalidInput(field, f"must have shape [{batch}], got {list(eps.shape)}")
            check_eps(eps, batch, field)
        return eps

    def verify(self, request: bound_worker_pb2.VerifyRequest, max_timeout: float) -> VerifyJob:
        spec = self._spec(request)
        try:  # the branch and bound bounds the layouts the relaxations take
            check_supported(spec)
        except ValueError as error:
            raise InvalidInput("spec", str(error)) from None
        params = check_params(spec, self.blob(request.params, "params", FLOATS), "params", flat=True)[0]
        x = self._inputs(request.inputs, spec)
        labels = check_labels(self.blob(request.labels, "labels", INTEGERS), x.shape[0], spec.num_outputs, "labels")
        if spec.num_outputs < 2:
            raise InvalidInput("labels", f"robustness needs at least 2 outputs, {spec.name} has {spec.num_outputs}")
        timeout = request.timeout_seconds
        if not math.isfinite(timeout) or not 0 < timeout <= max_timeout:
            raise InvalidInput("timeout_seconds", f"must lie in (0, {max_timeout:g}] (GLS_VERIFY_MAX_TIMEOUT_S), "
                                                  f"got {timeout!r}", timeout)
        return VerifyJob(spec, params, x, labels, self._perturbation(request, x.shape[0]), float(timeout))

    def bounds(self, request: bound_worker_pb2.BoundsRequest) -> BoundsJob:
        spec = self._spec(request)
        if not request.HasField("relaxation"):
            raise InvalidInput("relaxation", "is missing")
        method, options = relaxation_from_proto(request.relaxation)
        params = self.blob(request.params, "params", FLOATS)
        check_params(spec, params, "params")  # [D] or [P, D]: the answer keeps the shape asked for
        x = self._inputs(request.inputs, spec)
        labels = None
        if request.HasField("labels"):
            labels = check_labels(self.blob(request.labels, "labels", INTEGERS), x.shape[0], spec.num_outputs,
                                  "labels")
            if spec.num_outputs < 2:
                raise InvalidInput("labels", f"margins need at least 2 outputs, {spec.name} has {spec.num_outputs}")
        eps = self._perturbation(request, x.shape[0])
        if isinstance(eps, torch.Tensor):
            eps = eps.to(self.device)
        return BoundsJob(spec, params.to(self.device), x.to(self.device),
                         None if labels is None else labels.to(self.device), eps, method, options)
