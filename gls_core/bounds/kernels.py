"""Kernels chosen by measurement: each operation has candidate formulations, timed on first use.

Operations: ``transpose`` (coefficient rows through a convolution with a weight set per member) and
``forward`` (an interval step through such a convolution) live here; ``concretize`` and
``relax-concretize`` (the last steps into the input box, where the rows' coefficients on the input
are only needed as their concretisation) are registered by ``backsub``. Which formulation is
fastest depends on channels, map sizes, population and batch chunk and device, so, as cuDNN's
benchmark mode does, every applicable candidate is timed once per (operation, geometry, size
bucket, device, dtype, gradients) and the winner is cached for the process.

``GLS_KERNELS="transpose=native,concretize=materialize"`` pins choices (``pin`` does the same in
code); ``GLS_KERNEL_TUNING=0`` chooses without timing (``untimed_order``), and so does code inside
``with untimed():`` (the branch and bound, whose batch of subdomains changes size every call, would
otherwise pay for a timing of every candidate at each new size). ``choices()`` reports what was
chosen, for benchmarks.

Candidates of one operation may differ in the last bits, so a training run or job fixes its choices
in a *kernel plan*: plain data, ``repr(key)`` (operation first) -> candidate. ``record_plan()``
records the choices made in a piece of work; inside ``follow_plan(plan)`` every key of the plan
takes its candidate (``untimed_order`` where that candidate does not apply to the call) and every
other key ``untimed_order``: no timing, no pin and no cached choice of this process counts.
``using_plan(plan)`` follows a plan, or with None records one.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..members import conv_forward, conv_transpose_matrix, conv_transpose_polyphase
from ..nets.spec import Conv2d, conv_output_size
from . import native

DENSE_MATRIX_FLOATS = 1 << 24  # largest per-chunk dense composition matrix (64 MiB of float32)
TIMING_FLOATS = 1 << 20  # coefficient floats a candidate is timed on (a slice of the rows)
MAX_WARMUPS = 2  # runs of a candidate that only made nested kernel choices, before its timed runs
UNTIMED_NATIVE_CHANNELS = 16  # without timing, native for out_ch * in_ch up to this (CNN3-tiny, CNN3 conv1)


@dataclass(frozen=True)
class Geometry:
    """A convolution seen backwards: rows [P, N, O, h, w] through weights [P, O, C, k, k] at stride s."""

    out_ch: int
    height: int
    width: int
    in_ch: int
    kernel: int
    stride: int

    @property
    def full(self) -> tuple[int, int]:
        """Size of the full transposed convolution (no padding, no crop)."""
        return (self.height - 1) * self.stride + self.kernel, (self.width - 1) * self.stride + self.kernel

    @staticmethod
    def of(A: torch.Tensor, weight: torch.Tensor, stride: int) -> Geometry:
        """From rows whose last three axes are (O, h, w)."""
        return Geometry(A.shape[-3], A.shape[-2], A.shape[-1], weight.shape[2], weight.shape[3], stride)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _crop(full: torch.Tensor, crop: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Window ``size`` from ``crop`` of the last two axes, zero where it leaves the map (F.pad crops when negative)."""
    height, width = full.shape[-2:]
    return F.pad(full, (-crop[1], size[1] - (width - crop[1]), -crop[0], size[0] - (height - crop[0])))


# --- transposed convolution of coefficient rows: [P, N, O, h, w] -> [P, N, C, *size] ---------------------------

def transpose_grouped(A: torch.Tensor, weight: torch.Tensor, stride: int, crop: tuple[int, int],
                      size: tuple[int, int]) -> torch.Tensor:
    """Members as the groups of one grouped ``conv_transpose2d``."""
    members, rows, out_ch, height, width = A.shape
    in_ch, kernel = weight.shape[2], weight.shape[3]
    grouped = A.transpose(0, 1).reshape(rows, members * out_ch, height, width)
    full = F.conv_transpose2d(grouped, weight.reshape(members * out_ch, in_ch, kernel, kernel), stride=stride,
                              groups=members)
    full = full.view(rows, members, in_ch, *full.shape[-2:]).transpose(0, 1)
    return _crop(full, crop, size)


def transpose_shuffle(A: torch.Tensor, weight: torch.Tensor, stride: int, crop: tuple[int, int],
                      size: tuple[int, int]) -> torch.Tensor:
    """The s*s stride phases as the output channels of one grouped forward ``conv2d``, interleaved by
    ``pixel_shuffle``.

    Kernel index ``a*s + r`` reaches full-output row ``(i + a)*s + r``: phase r is an ordinary convolution
    with ceil(k/s) taps (flipped) over the rows padded by taps - 1. CPUs run forward convolutions of few
    channels 3-5x faster than ``conv_transpose2d`` (one network's rows: 2-3.5x over ``grouped``).
    """
    members, rows, out_ch, height, width = A.shape
    in_ch, kernel = weight.shape[2], weight.shape[3]
    taps = -(-kernel // stride)
    padded = F.pad(weight, (0, taps * stride - kernel, 0, taps * stride - kernel))
    phases = padded.view(members, out_ch, in_ch, taps, stride, taps, stride).flip(3, 5)
    phases = phases.permute(0, 2, 4, 6, 1, 3, 5).reshape(members * in_ch * stride * stride, out_ch, taps, taps)
    grouped = A.transpose(0, 1).reshape(rows, members * out_ch, height, width)
    full = F.pixel_shuffle(F.conv2d(grouped, phases, padding=taps - 1, groups=members), stride)
    full = full.view(rows, members, in_ch, *full.shape[-2:]).transpose(0, 1)
    return _crop(full, crop, size)


def transpose_polyphase(A: torch.Tensor, weight: torch.Tensor, stride: int, crop: tuple[int, int],
                        size: tuple[int, int]) -> torch.Tensor:
    """The s*s stride phases as one batched matmul of a windowed input."""
    return _crop(conv_transpose_polyphase(A, weight, stride), crop, size)


def transpose_dense(A: torch.Tensor, weight: torch.Tensor, stride: int, crop: tuple[int, int],
                    size: tuple[int, int]) -> torch.Tensor:
    """A per-member dense matrix of the cropped transposed convolution, then one ``bmm``."""
    members, rows, out_ch, height, width = A.shape
    in_ch = weight.shape[2]
    matrix = conv_transpose_matrix(weight, stride, height, width)
    matrix = _crop(matrix.view(members, -1, in_ch, *Geometry.of(A, weight, stride).full), crop, size)
    out = torch.bmm(A.reshape(members, rows, -1), matrix.reshape(members, out_ch * height * width, -1))
    return out.view(members, rows, in_ch, *size)


def transpose_native(A: torch.Tensor, weight: torch.Tensor, stride: int, crop: tuple[int, int],
                     size: tuple[int, int]) -> torch.Tensor:
    """The C kernel, vectorised over members (no gradients)."""
    return native.conv_rows_transpose(A, weight, stride, crop, size)


def _dense_fits(A: torch.Tensor, weight: torch.Tensor, stride: int, *_: object) -> bool:
    geometry = Geometry.of(A, weight, stride)
    matrix = A.shape[0] * geometry.out_ch * geometry.height * geometry.width * geometry.in_ch * math.prod(geometry.full)
    return matrix <= DENSE_MATRIX_FLOATS


TransposeFn = Callable[[torch.Tensor, torch.Tensor, int, tuple[int, int], tuple[int, int]], torch.Tensor]
TRANSPOSE: dict[str, tuple[TransposeFn, Callable[..., bool]]] = {
    "native": (transpose_native, lambda A, weight, stride, *_: not _needs_grad(A, weight)
               and native.usable(A, weight) and native.supports(weight.shape[3], stride)),
    "shuffle": (transpose_shuffle, lambda *_: True),
    "grouped": (transpose_grouped, lambda *_: True),
    "dense": (transpose_dense, _dense_fits),
    "polyphase": (transpose_polyphase, lambda *_: True),
}


def conv_transpose(A: torch.Tensor, weight: torch.Tensor, stride: int, crop: tuple[int, int],
                   size: tuple[int, int]) -> torch.Tensor:
    """Rows [P, N, O, h, w] through per-member weights [P, O, C, k, k]: the full transposed convolution,
    cropped to ``size`` pixels from ``crop`` (zeros past its edge) -> [P, N, C, *size]."""
    key = ("transpose", Geometry.of(A, weight, stride), crop, size, *size_key(A.shape[0], A.shape[1]),
           *tensor_key(A, weight))
    name = choose("transpose", key, TRANSPOSE, (A, weight, stride, crop, size), _timing_slice)
    return TRANSPOSE[name][0](A, weight, stride, crop, size)


# --- convolution of per-member activations (interval steps): [P, B, C, H, W] -> [P, B, O, Ho, Wo] ----------------

def forward_grouped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: Conv2d) -> torch.Tensor:
    """Members as the groups of one grouped ``conv2d``."""
    return conv_forward(x, weight, bias, conv)


def forward_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: Conv2d) -> torch.Tensor:
    """A per-member dense matrix of the convolution (the identity basis convolved), then one ``bmm``."""
    members, batch = x.shape[:2]
    size = math.prod(x.shape[2:])
    basis = torch.eye(size, dtype=x.dtype, device=x.device).view(size, *x.shape[2:])
    matrix = conv_forward(basis, weight, None, conv, shared_input=True)  # [P, CHW, O, Ho, Wo]
    out_shape = matrix.shape[2:]
    flat = x.reshape(members, batch, size)
    matrix = matrix.reshape(members, size, -1)
    if bias is None:
        out = torch.bmm(flat, matrix)
    else:
        spread = bias.view(members, 1, -1, 1).expand(members, 1, out_shape[0], math.prod(out_shape[1:]))
        out = torch.baddbmm(spread.reshape(members, 1, -1), flat, matrix)
    return out.view(members, batch, *out_shape)


def _forward_dense_fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: Conv2d) -> bool:
    outputs = conv.out_channels * conv_output_size(x.shape[3], conv) * conv_output_size(x.shape[4], conv)
    return x.shape[0] * math.prod(x.shape[2:]) * outputs <= DENSE_MATRIX_FLOATS


def forward_native(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: Conv2d) -> torch.Tensor:
    """The C kernel, vectorised over members (no gradients)."""
    out_hw = (conv_output_size(x.shape[3], conv), conv_output_size(x.shape[4], conv))
    return native.conv_members_forward(x, weight, bias, conv.stride, conv.padding, out_hw)


FORWARD: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., bool]]] = {
    "grouped": (forward_grouped, lambda *_: True),
    "dense": (forward_dense, _forward_dense_fits),
    "native": (forward_native, lambda x, weight, bias, conv: not _needs_grad(x, weight, *([bias] if bias is not None
                                                                                           else []))
               and native.usable(x, weight)),
}


def conv_members(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: Conv2d) -> torch.Tensor:
    """Per-member activations [P, B, C, H, W] through per-member weights [P, O, C, k, k] (and bias [P, O])."""
    key = ("forward", conv, tuple(x.shape[2:]), *size_key(x.shape[0], x.shape[1]), *tensor_key(x, weight))
    name = choose("forward", key, FORWARD, (x, weight, bias, conv), _timing_slice)
    return FORWARD[name][0](x, weight, bias, conv)


# --- the last step: rows on the first convolution's output, concretised over the input box -> [P, N] ----------

@dataclass(frozen=True)
class RowPlacement:
    """Where each of N rows (shared by all members) reads the input box: its sample and window origin."""

    sample: torch.Tensor  # [N] int64
    origin_y: torch.Tensor  # [N] input row of the window's top-left pixel (may be negative: zero padding)
    origin_x: torch.Tensor


def concretize_native(A: torch.Tensor, weight: torch.Tensor, stride: int, box_centre: torch.Tensor,
                      box_radius: torch.Tensor, placement: RowPlacement) -> torch.Tensor:
    """The C kernel: never stores the coefficients on the input; differentiable in the rows ``A`` only
    (what alpha-CROWN's slope optimisation needs)."""
    index = (placement.sample, placement.origin_y, placement.origin_x)
    if torch.is_grad_enabled() and A.requires_grad:
        result: torch.Tensor = _NativeConcretize.apply(A, weight, stride, box_centre, box_radius, *index)
        return result
    return native.conv_rows_concretize(A, weight, stride, box_centre, box_radius, *index)


class _NativeConcretize(torch.autograd.Function):
    """The native concretisation with its gradient in the rows: centre - sign(g) radius, correlated with the weights."""

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor, weight: torch.Tensor, stride: int, centre: torch.Tensor,
                radius: torch.Tensor, sample: torch.Tensor, origin_y: torch.Tensor,
                origin_x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(A, weight, centre, radius, sample, origin_y, origin_x)
        ctx.stride = stride
        return native.conv_rows_concretize(A, weight, stride, centre, radius, sample, origin_y, origin_x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        A, weight, centre, radius, sample, origin_y, origin_x = ctx.saved_tensors
        dual = native.conv_rows_dual(A, weight, ctx.stride, centre, radius, sample, origin_y, origin_x)
        return (grad[..., None, None, None] * dual, *([None] * 7))


def native_applies(kernel: int, stride: int, *tensors: torch.Tensor) -> bool:
    """Whether the native kernels can run on these tensors and this geometry (CPU float32, no gradients)."""
    return not _needs_grad(*tensors) and native.usable(*tensors) and native.supports(kernel, stride)


def concretize_applies(A: torch.Tensor, weight: torch.Tensor, stride: int, box_centre: torch.Tensor,
                       box_radius: torch.Tensor) -> bool:
    """Whether the fused native concretisation can run on these tensors (CPU float32; gradients in A only)."""
    return native_applies(weight.shape[3], stride, weight, box_centre, box_radius) and native.usable(A)


# --- selection ---------------------------------------------------------------------------------------------------

_chosen: dict[tuple[Any, ...], str] = {}
_timings: dict[tuple[Any, ...], dict[str, float]] = {}
_pins: dict[str, str] = {}

KernelPlan = dict[str, str]
"""Kernel choices as plain data: ``plan_key(key)`` -> candidate name (JSON- and protobuf-map-ready)."""


def pin(operation: str, candidate: str | None) -> None:
    """Force a candidate for an operation (None: measure again); overrides ``GLS_KERNELS``."""
    table = OPERATIONS.get(operation)
    if table is None:
        raise ValueError(f"unknown kernel operation {operation!r}; expected one of {sorted(OPERATIONS)}")
    if candidate is None:
        _pins.pop(operation, None)
        return
    if candidate not in table:
        raise ValueError(f"unknown {operation} kernel {candidate!r}; expected one of {sorted(table)}")
    _pins[operation] = candidate


def choices() -> list[dict[str, Any]]:
    """Every choice made in this process: operation, key, candidate and the measured seconds per candidate."""
    return [{"operation": key[0], "key": repr(key[1:]), "chosen": name, "seconds": _timings.get(key, {})}
            for key, name in _chosen.items()]


_local = threading.local()


@contextmanager
def untimed() -> Iterator[None]:
    """Kernels chosen without timing in this thread while inside (nothing is cached for later timed calls)."""
    depth = getattr(_local, "untimed", 0)
    _local.untimed = depth + 1
    try:
        yield
    finally:
        _local.untimed = depth


def plan_key(key: tuple[Any, ...]) -> str:
    """A choice's key in a :data:`KernelPlan`: the repr of the key (operation first), the same in every process."""
    return repr(key)


@contextmanager
def _in_thread(name: str, value: Any) -> Iterator[None]:
    previous = getattr(_local, name, None)
    setattr(_local, name, value)
    try:
        yield
    finally:
        setattr(_local, name, previous)


@contextmanager
def record_plan() -> Iterator[KernelPlan]:
    """Record the choices made in this thread while inside, as they are made, into the plan yielded.

    A key's first call chooses as usual (pinned, cached or measured); its later calls inside take the
    recorded choice as :func:`follow_plan` would, so the work done here equals the same work done
    again under ``follow_plan`` of what was recorded.
    """
    plan: KernelPlan = {}
    with _in_thread("recording", plan):
        yield plan


@contextmanager
def follow_plan(plan: Mapping[str, str]) -> Iterator[None]:
    """Choose by ``plan`` in this thread while inside: its candidate for each of its keys (``untimed_order``
    where that candidate does not apply to the call), ``untimed_order`` for every other key. Nothing is
    measured, pins are ignored and nothing is cached."""
    with _in_thread("plan", dict(plan)):
        yield


@contextmanager
def using_plan(plan: Mapping[str, str] | None) -> Iterator[KernelPlan]:
    """Follow ``plan``; with None, choose as this process is configured and record. Yields the plan in effect."""
    if plan is None:
        with record_plan() as recorded:
            yield recorded
        return
    with follow_plan(plan):
        yield dict(plan)


def reset() -> None:
    """Forget the measured choices (the next call of each operation measures again)."""
    _chosen.clear()
    _timings.clear()


def _env_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for item in filter(None, os.environ.get("GLS_KERNELS", "").split(",")):
        operation, _, candidate = item.partition("=")
        pins[operation.strip()] = candidate.strip()
    return pins


def size_key(members: int, rows: int) -> tuple[int, int]:
    """Members and rows rounded up to powers of two, so chunk remainders reuse a measurement."""
    return 1 << max(0, members - 1).bit_length(), 1 << max(0, rows - 1).bit_length()


def tensor_key(*tensors: torch.Tensor) -> tuple[str, str, bool]:
    return str(tensors[0].device), str(tensors[0].dtype), _needs_grad(*tensors)


Table = dict[str, tuple[Callable[..., Any], Callable[..., bool]]]
OPERATIONS: dict[str, Table] = {"transpose": TRANSPOSE, "forward": FORWARD}


def choose(operation: str, key: tuple[Any, ...], table: Table, args: tuple[Any, ...],
           slicer: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None) -> str:
    """The candidate of ``table`` to run on ``args``: by the plan followed (:func:`follow_plan`), else pinned,
    cached for ``key``, or measured now (and recorded inside :func:`record_plan`).

    ``slicer`` restricts the arguments to a bounded amount of work for timing (None: time on ``args``).
    """
    OPERATIONS.setdefault(operation, table)
    applicable = [name for name, (_, applies) in table.items() if applies(*args)]
    followed = getattr(_local, "plan", None)
    if followed is not None:
        return _planned(followed.get(plan_key(key)), args, applicable)
    recording = getattr(_local, "recording", None)
    if recording is None:
        return _measured(operation, key, table, args, applicable, slicer)
    name = recording.get(plan_key(key))
    if name is not None:
        return _planned(name, args, applicable)
    recording[plan_key(key)] = name = _measured(operation, key, table, args, applicable, slicer)
    return name


def _planned(name: str | None, args: tuple[Any, ...], applicable: list[str]) -> str:
    """A plan's candidate when it applies to ``args``, else the untimed choice."""
    return name if name in applicable else untimed_order(args, applicable)


def _measured(operation: str, key: tuple[Any, ...], table: Table, args: tuple[Any, ...], applicable: list[str],
              slicer: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None) -> str:
    """The choice outside any plan: pinned, cached for ``key``, or measured now."""
    pinned = _pins.get(operation) or _env_pins().get(operation)
    if pinned:
        if pinned not in table:
            raise ValueError(f"GLS_KERNELS: unknown {operation} kernel {pinned!r}; expected one of {sorted(table)}")
        if pinned in applicable:
            return pinned
    if key in _chosen and _chosen[key] in applicable:  # the key may not capture every applicability condition
        return _chosen[key]
    if getattr(_local, "untimed", 0):
        return untimed_order(args, applicable)
    if len(applicable) == 1 or os.environ.get("GLS_KERNEL_TUNING", "1") == "0":
        untimed = untimed_order(args, applicable)
        _chosen[key] = untimed
        return untimed
    sample = args if slicer is None else slicer(args)
    seconds: dict[str, float] = {}
    for name in applicable:
        seconds[name] = _seconds(table[name][0], sample, min(seconds.values(), default=math.inf))
    _chosen[key] = min(seconds, key=seconds.__getitem__)
    _timings[key] = seconds
    return _chosen[key]


def untimed_order(args: tuple[Any, ...], applicable: list[str]) -> str:
    """The choice without timing: the member-vectorised native kernel for few channels and a population that
    fills its vector blocks (where it was measured fastest on CPUs), else the first applicable torch candidate in
    the table's order."""
    weight = next(arg for arg in args[1:] if isinstance(arg, torch.Tensor) and arg.dim() == 5)  # [P, O, C, k, k]
    few_channels = weight.shape[1] * weight.shape[2] <= UNTIMED_NATIVE_CHANNELS
    fills_lanes = weight.shape[0] >= native.WIDTHS[0]
    torch_candidates = [name for name in applicable if name != "native"]
    if "native" in applicable and ((few_channels and fills_lanes) or not torch_candidates):
        return "native"
    return torch_candidates[0]


def _timing_slice(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments restricted to the first rows (or inputs) of axis 1, so timing costs a bounded amount of work."""
    A = args[0]
    rows = max(1, min(A.shape[1], TIMING_FLOATS // max(1, A[:, :1].numel())))
    return (A[:, :rows], *args[1:])


def _seconds(fn: Callable[..., torch.Tensor], args: tuple[Any, ...], best_so_far: float) -> float:
    """The faster of two timed runs; a candidate whose first run is 3x slower than the best so far
    is not run again (its first run also pays one-off allocation, so it is only ever overestimated).

    A run during which a nested operation measured its own candidates (a step-by-step path choosing its
    transposed convolution) is a warm-up and does not count: it timed every nested candidate, the slowest
    included, and would have ruled the path out for work it never does again.
    """
    best = math.inf
    counted = 0
    with torch.no_grad():
        for _ in range(2 + MAX_WARMUPS):
            measured_before = len(_timings)
            _synchronize()
            start = time.perf_counter()
            fn(*args)
            _synchronize()
            elapsed = time.perf_counter() - start
            if len(_timings) != measured_before:
                continue
            counted += 1
            best = min(best, elapsed)
            if counted == 2 or (counted == 1 and best > 3 * best_so_far):
                break
    return best


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
