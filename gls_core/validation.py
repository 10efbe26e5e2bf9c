"""The checks every entry point runs on its arguments, each raising :class:`~gls_core.errors.InvalidInput`.

One function per kind of argument (radii, inputs, labels, parameters, counts; a relaxation and its
options are checked by its record, :mod:`gls_core.relaxations`), each
taking the ``field`` to name: the library passes its argument names (``x``, ``eps``), a server its
wire or JSON paths (``inputs``, ``perturbation.eps``, ``batch.x``), so a bad value is reported the
same way in process, over gRPC and over REST.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import torch

from .errors import InvalidInput

if TYPE_CHECKING:
    from .nets.spec import NetSpec

def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real | torch.Tensor) or (
            isinstance(value, torch.Tensor) and value.numel() != 1):
        raise InvalidInput(field, f"must be a number, got {type(value).__name__}", value)
    return float(value)


def check_radius(eps: object, field: str = "eps") -> float:
    """One L_inf radius: a finite number >= 0."""
    value = _number(eps, field)
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(field, f"must be finite and >= 0, got {value!r}", eps)
    return value


def check_eps(eps: float | torch.Tensor, batch: int, field: str = "eps") -> torch.Tensor:
    """A radius for the whole batch or one per input ([batch]), finite and >= 0, as float64."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real | torch.Tensor):
        raise InvalidInput(field, f"must be a number or a tensor of {batch} radii, got {type(eps).__name__}", eps)
    if isinstance(eps, torch.Tensor) and (eps.is_complex() or eps.dtype == torch.bool):
        raise InvalidInput(field, f"must hold real radii, got dtype {str(eps.dtype).removeprefix('torch.')}", eps)
    value = torch.as_tensor(eps, dtype=torch.float64)
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
        raise InvalidInput(field, f"must be a scalar or have shape [{batch}] (one radius per input), "
                                  f"got shape {list(value.shape)}", eps)
    bad = (~torch.isfinite(value) | (value < 0)).flatten().nonzero()
    if bad.numel():
        if value.dim() == 0:
            raise InvalidInput(field, f"must be finite and >= 0, got {float(value)!r}", eps)
        index = int(bad[0])
        raise InvalidInput(field, f"must be finite and >= 0, got {float(value[index]):g} at index {index}", eps)
    return value


def _finite(tensor: torch.Tensor, field: str) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise InvalidInput(field, "contains NaN or inf", tensor)


def check_finite(tensor: torch.Tensor, field: str) -> torch.Tensor:
    """No NaN or inf (integer tensors always pass)."""
    _finite(tensor, field)
    return tensor


def check_inputs(spec: NetSpec, x: object, field: str = "x") -> torch.Tensor:
    """A non-empty batch [B, *spec.input_shape] of finite pixels in [0, 1] (data space, before normalisation)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = type(x).__name__ if not isinstance(x, torch.Tensor) else str(x.dtype).removeprefix("torch.")
        raise InvalidInput(field, f"must be a floating point torch.Tensor, got {got}", x)
    if x.dim() > 0 and x.shape[0] == 0:
        raise InvalidInput(field, f"is an empty batch (no inputs: shape {list(x.shape)})", x)
    expected = tuple(spec.input_shape)
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise InvalidInput(field, f"must have shape [B, {', '.join(map(str, expected))}] for {spec.name}, "
                                  f"got {list(x.shape)}", x)
    _finite(x, field)
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise InvalidInput(field, f"must lie in [0, 1] (pixels before normalisation), found values in "
                                  f"[{low:g}, {high:g}]", x)
    return x


def check_labels(y: object, batch: int | None, classes: int, field: str = "y") -> torch.Tensor:
    """Integer class labels, one per input ([batch]; None: any length), each in 0..classes-1; as int64.

    A label out of range is named with its index: ``labels.3``.
    """
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        got = type(y).__name__ if not isinstance(y, torch.Tensor) else str(y.dtype).removeprefix("torch.")
        raise InvalidInput(field, f"must be integer class labels, got {got}", y)
    if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
        raise InvalidInput(field, f"must have shape [{'B' if batch is None else batch}] (one label per input), "
                                  f"got {list(y.shape)}", y)
    labels = y.to(torch.int64)
    bad = ((labels < 0) | (labels >= classes)).nonzero().flatten()
    if bad.numel():
        index = int(bad[0])
        raise InvalidInput(f"{field}.{index}", f"label {int(labels[index])} is not a class of the network "
                                               f"(0..{classes - 1})", int(labels[index]))
    return labels


def check_params(spec: NetSpec, params: torch.Tensor, field: str = "params", *, single: bool = False,
                 flat: bool = False) -> torch.Tensor:
    """A population P x D (or one network, D) of finite floating point weights for ``spec``, as P x D.

    ``single``: exactly one network (``[D]`` or ``[1, D]``); ``flat``: exactly ``[D]``.
    """
    population = params.unsqueeze(0) if params.dim() == 1 else params
    single = single or flat
    if population.dim() != 2 or population.shape[1] != spec.num_params or population.shape[0] == 0 or (
            single and population.shape[0] != 1) or (flat and params.dim() != 1):
        shape = f"[{spec.num_params}]" if single else f"[P, {spec.num_params}] or [{spec.num_params}]"
        raise InvalidInput(field, f"must have shape {shape} (the {spec.num_params} parameters of {spec.name}), "
                                  f"got {list(params.shape)}", params)
    if not population.is_floating_point():
        raise InvalidInput(field, f"must be floating point, got {str(params.dtype).removeprefix('torch.')}", params)
    _finite(population, field)
    return population


def check_count(value: object, field: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum] (steps, restarts, batch sizes, member counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInput(field, f"must be an integer, got {type(value).__name__}", value)
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InvalidInput(field, f"must be an integer {bound}, got {number}", number)
    return number


def check_members(start: int, stop: int, count: int, limit: int | None = None,
                  fields: tuple[str, str] = ("start", "stop")) -> None:
    """A non-empty range [start, stop) of a population of ``count`` members, at most ``limit`` long."""
    check_count(start, fields[0], 0)
    if stop <= start:
        raise InvalidInput(fields[1], f"member range [{start}, {stop}) is empty", stop)
    if stop > count:
        raise InvalidInput(fields[1], f"member range [{start}, {stop}) exceeds the population of {count}", stop)
    if limit is not None and stop - start > limit:
        raise InvalidInput(fields[1], f"member range [{start}, {stop}) has more than {limit} members (split it "
                                      "over several requests)", stop)
