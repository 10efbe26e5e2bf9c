"""The public entry point: bounds of C @ f(x') over the input region, for one network or a population."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .. import relaxations
from ..errors import InvalidInput
from ..nets.convert import from_sequential
from ..nets.spec import Conv2d, Linear, NetSpec
from ..validation import check_labels
from . import native
from .backsub import Sides, footprint
from .layerwise import check_supported
from .region import input_box
from .types import Box

BoundFn = Callable[..., Box]
MEMBER_BLOCK = native.LANES  # members per vector block of the native kernels
DEFAULT_CHUNK_FLOATS = 1 << 23  # largest coefficient tensor per chunk: 32 MiB of float32 (measured best)


class NotDifferentiableError(RuntimeError):
    """Raised when gradients in theta are requested from a relaxation evaluated without them."""


def margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C (B x (classes-1) x classes) whose rows give the logit differences y_i - y_t, i != t."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    y = check_labels(torch.as_tensor(y), None, num_classes)
    eye = torch.eye(num_classes, device=y.device)
    rows = eye.unsqueeze(0) - eye[y].unsqueeze(1)  # [B, classes, classes]: row i is e_i - e_t
    keep = ~torch.nn.functional.one_hot(y, num_classes).bool()
    return rows[keep].view(y.shape[0], num_classes - 1, num_classes)


def _resolve(net: NetSpec | nn.Sequential, x: torch.Tensor, params: torch.Tensor | None
             ) -> tuple[NetSpec, torch.Tensor, bool]:
    if isinstance(net, nn.Sequential):
        spec, theta = from_sequential(net, tuple(x.shape[1:]))
        if params is None:
            return spec, theta.to(x.dtype).unsqueeze(0), True
        if any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in net):
            raise ValueError(
                "params cannot be combined with a Sequential containing BatchNorm (the layout changes when folded)")
        if any(isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is None for m in net):
            raise ValueError("params cannot be combined with a Sequential whose Conv2d/Linear layers lack biases: "
                             "the flat layout has a bias for every affine layer; pass the spec from from_sequential")
        return spec, spec.check_population(params), params.dim() == 1
    if not isinstance(net, NetSpec):
        raise TypeError(f"net must be a NetSpec or torch.nn.Sequential, got {type(net).__name__}")
    if params is None:
        raise ValueError("params (P x D, or D) is required when net is a NetSpec")
    return net, net.check_population(params), params.dim() == 1


def _check_spec_matrix(C: torch.Tensor | None, batch: int, classes: int) -> None:
    if C is None:
        return
    if not isinstance(C, torch.Tensor) or C.dim() != 3 or C.shape[0] != batch or C.shape[2] != classes:
        shape = tuple(C.shape) if isinstance(C, torch.Tensor) else type(C).__name__
        raise ValueError(f"C must have shape (B={batch}, K, {classes}), got {shape}")
    if C.shape[1] == 0:
        raise ValueError("C has no rows (K = 0)")
    if not bool(torch.isfinite(C).all()):
        raise ValueError("C contains NaN or inf")


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Treat subnormal floats as zero while bounding (the setting is switched off again afterwards).

    Long products of small coefficients reach the subnormal range, where x86 arithmetic is tens of
    times slower (measured: 3x end to end for DeepPoly on CNN3). The error is below 1e-38 per term.
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def chunk_sizes(spec: NetSpec, method: str | relaxations.Relaxation, members: int, batch: int, rows: int | None,
                budget: int = DEFAULT_CHUNK_FLOATS, fused_input: bool = False) -> tuple[int, int]:
    """(members, inputs) per chunk so the largest coefficient tensor stays within ``budget`` floats.

    Members come first, in whole vector blocks where the budget allows: the member-vectorised
    kernels run at a fraction of their speed on a handful of members.
    """
    record = method if isinstance(method, relaxations.Relaxation) else relaxations.lookup(method)
    if record.footprint == "activations":
        per = max(math.prod(shape) for shape in spec.shapes)
    else:
        first = next(i for i, layer in enumerate(spec.layers) if isinstance(layer, (Conv2d, Linear)))
        targets = [i for i, layer in enumerate(spec.layers) if isinstance(layer, (Conv2d, Linear)) and i > first]
        last = len(spec.layers) - 1
        per = max((footprint(spec, t, first, rows if t == last else None, fused_input) for t in targets), default=1)
    samples = max(1, budget // max(per, 1))
    member_chunk = min(members, max(min(MEMBER_BLOCK, samples), samples // batch))
    batch_chunk = min(batch, max(1, samples // member_chunk))
    return member_chunk, batch_chunk


def compute_bounds(net: NetSpec | nn.Sequential, x: torch.Tensor, eps: float | torch.Tensor, method: str = "deeppoly",
                   C: torch.Tensor | None = None, params: torch.Tensor | None = None,
                   chunk_floats: int = DEFAULT_CHUNK_FLOATS, sides: Sides = "both",
                   **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of C @ f(x') for every x' in the eps-ball around x within [0, 1].

    ``net`` is a :class:`NetSpec` (then ``params`` is the P x D population, or one D vector) or a
    ``torch.nn.Sequential`` (its own weights, or ``params`` in ``parameters_to_vector`` layout).
    ``x`` is B x input shape in [0, 1]; ``C`` is B x K x classes (None: the logits themselves).
    Returns P x B x K tensors for a population, B x K for a single network.
    ``sides`` ("both", "lower" or "upper") asks for one side only: the robust loss and certification
    need only the upper bounds of the margins, and one side costs about half of both; the side not
    asked for is returned as -inf (lower) or inf (upper).
    ``options`` are the method's (its record in :mod:`gls_core.relaxations`; those left out take their
    defaults); ``should_stop``, when given, is polled between the steps of a method that has steps
    (stopping early gives looser, still sound, bounds) and ignored by the others.
    """
    if sides not in ("both", "lower", "upper"):
        raise InvalidInput("sides", "must be 'both', 'lower' or 'upper'", sides)
    should_stop = options.pop("should_stop", None)
    record = relaxations.lookup(method)
    options = record.check(options, called=method)
    if record.stoppable and should_stop is not None:
        options["should_stop"] = should_stop
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, *input_shape), got {type(x).__name__}")
    spec, population, single = _resolve(net, x, params)
    check_supported(spec)
    box = input_box(spec, x.to(population.dtype), eps)
    _check_spec_matrix(C, x.shape[0], spec.num_outputs)
    if C is not None:
        C = C.to(population.dtype)
    if not record.differentiable and population.requires_grad and torch.is_grad_enabled():
        raise NotDifferentiableError(
            f"{method} is evaluated without gradients in theta (use PGPE); pass params without requires_grad "
            "or call it under torch.no_grad()")
    members, batch = population.shape[0], x.shape[0]
    rows = None if C is None else C.shape[1]
    fused_input = native.usable(population) and not (population.requires_grad and torch.is_grad_enabled())
    member_chunk, batch_chunk = chunk_sizes(spec, record, members, batch, rows, chunk_floats, fused_input)
    bound = record.bound_function()
    with flushed_denormals():
        lower, upper = _chunked(bound, spec, population, box, C, member_chunk, batch_chunk,
                                {**options, "sides": sides})
    lower, upper = lower.reshape(members, batch, -1), upper.reshape(members, batch, -1)
    if sides == "lower":
        upper = torch.full_like(lower, math.inf)
    elif sides == "upper":
        lower = torch.full_like(upper, -math.inf)
    if single:
        return lower[0], upper[0]
    return lower, upper


def _chunked(bound: BoundFn, spec: NetSpec, population: torch.Tensor, box: Box, C: torch.Tensor | None,
             member_chunk: int, batch_chunk: int, options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate chunk by chunk over members and inputs; results are independent across both."""
    members, batch = population.shape[0], box.lower.shape[0]
    lowers, uppers = [], []
    for p0 in range(0, members, member_chunk):
        row_l, row_u = [], []
        for b0 in range(0, batch, batch_chunk):
            sub = Box(box.lower[b0 : b0 + batch_chunk], box.upper[b0 : b0 + batch_chunk])
            sub_c = None if C is None else C[b0 : b0 + batch_chunk]
            result = bound(spec, population[p0 : p0 + member_chunk], sub, sub_c, **options)
            row_l.append(result.lower)
            row_u.append(result.upper)
        lowers.append(torch.cat(row_l, dim=1))
        uppers.append(torch.cat(row_u, dim=1))
    return torch.cat(lowers, dim=0), torch.cat(uppers, dim=0)
