"""Native CPU kernels, compiled from C on first use with the machine's C compiler and loaded with ctypes.

They are candidates of the kernel selection, never requirements: when no compiler is found, the
build fails or the tensors are not contiguous float32 CPU tensors, the engine uses its torch
kernels. The shared library is cached per source, compiler flags and CPU in ``$GLS_KERNEL_CACHE``
(default ``~/.cache/gls/kernels``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("conv_rows.c")
SOURCES = (SOURCE, SOURCE.with_name("conv_rows_lanes.h"))
MAX_TAPS = 16  # kernel taps per axis that reach one output pixel, ceil(k / s) (conv_rows.c)
WIDTHS = (8, 32)  # members per vector block, one compiled variant each
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
_int64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


def _cache_dir() -> Path:
    return Path(os.environ.get("GLS_KERNEL_CACHE", Path.home() / ".cache" / "gls" / "kernels"))


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be built here (the torch kernels are used).

    The build is written to a temporary file and renamed, so concurrent processes never load half a library.
    """
    if os.environ.get("GLS_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    source = b"".join(path.read_bytes() for path in SOURCES)
    digest = hashlib.sha256(source + " ".join((compiler, *FLAGS, _cpu_id())).encode()).hexdigest()[:16]
    target = _cache_dir() / f"conv_rows-{digest}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                built = Path(scratch) / target.name
                subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], check=True,
                               capture_output=True, timeout=120)
                os.replace(built, target)
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    for width in WIDTHS:
        transpose = getattr(lib, f"gls_conv_rows_transpose{width}")
        concretize = getattr(lib, f"gls_conv_rows_concretize{width}")
        transpose.argtypes, transpose.restype = [_ptr, _ptr, _ptr, *([_int64] * 12), _int], None
        concretize.argtypes, concretize.restype = [_ptr] * 8 + [_int64] * 10 + [_int], None
        dual = getattr(lib, f"gls_conv_rows_dual{width}")
        dual.argtypes, dual.restype = [_ptr] * 8 + [_int64] * 10 + [_int], None
        for name in ("gls_relax_concretize", "gls_relax_dual"):
            relax = getattr(lib, f"{name}{width}")
            relax.argtypes, relax.restype = [_ptr] * 15 + [_int64] * 13 + [_int], None
        members_forward = getattr(lib, f"gls_conv_members_forward{width}")
        members_forward.argtypes, members_forward.restype = [_ptr] * 4 + [_int64] * 11 + [_int], None
        forward = getattr(lib, f"gls_relax_forward{width}")
        forward.argtypes, forward.restype = [_ptr] * 10 + [_int64] * 11 + [_int], None
    lib.gls_members_last.argtypes, lib.gls_members_last.restype = [_ptr] * 2 + [_int64] * 6 + [_int], None
    return lib


def usable(*tensors: torch.Tensor) -> bool:
    """True when the native kernels exist and can read these tensors directly."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and library() is not None


def supports(kernel: int, stride: int) -> bool:
    """Whether a convolution's geometry fits the kernels' tap tables."""
    return -(-kernel // stride) <= MAX_TAPS


def _width(members: int) -> int:
    """The vector block for a population: 8 members for small ones (less padding), else 32."""
    return WIDTHS[0] if members < 24 else WIDTHS[1]


def conv_rows_transpose(A: torch.Tensor, weight: torch.Tensor, stride: int, crop: tuple[int, int],
                        size: tuple[int, int]) -> torch.Tensor:
    """[P, N, O, h, w] rows through per-member weights [P, O, C, k, k] -> [P, N, C, *size].

    The full transposed convolution (no padding) cropped to ``size`` pixels from ``crop``.
    """
    lib = library()
    assert lib is not None
    members, rows, out_ch, height, width = A.shape
    in_ch, kernel = weight.shape[2], weight.shape[3]
    A, weight = _members_last(A), _members_last(weight)
    lanes = A.shape[-1]
    out = torch.empty(rows, in_ch, *size, lanes, dtype=A.dtype)
    kernel_fn = getattr(lib, f"gls_conv_rows_transpose{_width(members)}")
    kernel_fn(A.data_ptr(), weight.data_ptr(), out.data_ptr(), lanes, rows, out_ch, height, width, in_ch, kernel,
              stride, crop[0], crop[1], size[0], size[1], torch.get_num_threads())
    # A members-last view: the next native kernel reads it without a copy (torch ops accept any strides).
    return out[..., :members].permute(4, 0, 1, 2, 3)


def conv_rows_concretize(A: torch.Tensor, weight: torch.Tensor, stride: int, centre: torch.Tensor,
                         radius: torch.Tensor, sample: torch.Tensor, origin_y: torch.Tensor,
                         origin_x: torch.Tensor) -> torch.Tensor:
    """min over the box of (rows through the layer) . x, per row: [P, N].

    ``centre``/``radius`` are the input box [B, C, H, W]; ``sample``, ``origin_y``, ``origin_x``
    ([N] int64, shared by all members) give each row's input and the input position of its
    window's top-left pixel.
    """
    members, rows = A.shape[:2]
    out = torch.empty(rows, _lanes(members), dtype=A.dtype)
    _box_kernel("gls_conv_rows_concretize", out, A, weight, stride, centre, radius, sample, origin_y, origin_x)
    return out[:, :members].t()


def conv_rows_dual(A: torch.Tensor, weight: torch.Tensor, stride: int, centre: torch.Tensor, radius: torch.Tensor,
                   sample: torch.Tensor, origin_y: torch.Tensor, origin_x: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`conv_rows_concretize` with respect to the rows ``A``: [P, N, O, h, w]."""
    members, rows = A.shape[:2]
    out = torch.empty(rows, *A.shape[2:], _lanes(members), dtype=A.dtype)
    _box_kernel("gls_conv_rows_dual", out, A, weight, stride, centre, radius, sample, origin_y, origin_x)
    return out[..., :members].permute(4, 0, 1, 2, 3)


def _box_kernel(name: str, out: torch.Tensor, A: torch.Tensor, weight: torch.Tensor, stride: int,
                centre: torch.Tensor, radius: torch.Tensor, sample: torch.Tensor, origin_y: torch.Tensor,
                origin_x: torch.Tensor) -> None:
    lib = library()
    assert lib is not None
    members, rows, out_ch, height, width = A.shape
    in_ch, kernel = weight.shape[2], weight.shape[3]
    A, weight = _members_last(A), _members_last(weight)
    centre, radius = centre.detach().contiguous(), radius.detach().contiguous()
    index = [t.to(torch.int64).contiguous() for t in (sample, origin_y, origin_x)]
    kernel_fn = getattr(lib, f"{name}{_width(members)}")
    kernel_fn(A.data_ptr(), weight.data_ptr(), centre.data_ptr(), radius.data_ptr(), index[0].data_ptr(),
              index[1].data_ptr(), index[2].data_ptr(), out.data_ptr(), A.shape[-1], rows, out_ch, height, width,
              in_ch, kernel, stride, centre.shape[2], centre.shape[3], torch.get_num_threads())


def relax_concretize(A: torch.Tensor, arow: torch.Tensor, lower_slope: torch.Tensor, lmap: torch.Tensor,
                     upper_slope: torch.Tensor, upper_offset: torch.Tensor | None, umap: torch.Tensor,
                     origin_y: torch.Tensor, origin_x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     padding: int, stride: int, centre: torch.Tensor, radius: torch.Tensor,
                     sample: torch.Tensor) -> torch.Tensor:
    """Rows on a ReLU's output, through its relaxation and the first convolution below it, concretised: [P, N].

    ``A`` [P, M, O, h, w] holds M distinct rows, row n reading ``A[:, arow[n]]``; the relaxation's
    maps are [P, *, O, H1, W1] (lower slopes indexed by ``lmap``, upper slope and offset by ``umap``);
    row n's window starts at (origin_y[n], origin_x[n]) of those maps. ``weight`` [P, O, C, k, k]
    and ``bias`` [P, O] are the convolution's; ``centre``/``radius`` the input box [B, C, H, W].
    """
    members, rows = A.shape[0], arow.shape[0]
    out = torch.empty(rows, _lanes(members), dtype=A.dtype)
    _relax_kernel("gls_relax_concretize", out, A, arow, lower_slope, lmap, upper_slope, upper_offset, umap, origin_y,
                  origin_x, weight, bias, padding, stride, centre, radius, sample)
    return out[:, :members].t()


def relax_dual(A: torch.Tensor, arow: torch.Tensor, lower_slope: torch.Tensor, lmap: torch.Tensor,
               upper_slope: torch.Tensor, upper_offset: torch.Tensor | None, umap: torch.Tensor,
               origin_y: torch.Tensor, origin_x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               padding: int, stride: int, centre: torch.Tensor, radius: torch.Tensor,
               sample: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`relax_concretize` with respect to each row's relaxed coefficients: [P, N, O, h, w]."""
    members, rows = A.shape[0], arow.shape[0]
    out = torch.empty(rows, *A.shape[2:], _lanes(members), dtype=A.dtype)
    _relax_kernel("gls_relax_dual", out, A, arow, lower_slope, lmap, upper_slope, upper_offset, umap, origin_y,
                  origin_x, weight, bias, padding, stride, centre, radius, sample)
    return out[..., :members].permute(4, 0, 1, 2, 3)


def _lanes(members: int) -> int:
    width = _width(members)
    return -(-members // width) * width


def _relax_kernel(name: str, out: torch.Tensor, A: torch.Tensor, arow: torch.Tensor, lower_slope: torch.Tensor,
                  lmap: torch.Tensor, upper_slope: torch.Tensor, upper_offset: torch.Tensor | None, umap: torch.Tensor,
                  origin_y: torch.Tensor, origin_x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  padding: int, stride: int, centre: torch.Tensor, radius: torch.Tensor, sample: torch.Tensor) -> None:
    lib = library()
    assert lib is not None
    members, _, out_ch, height, width = A.shape
    in_ch, kernel = weight.shape[2], weight.shape[3]
    maps_h, maps_w = lower_slope.shape[-2:]
    A, weight, bias = _members_last(A), _members_last(weight), _members_last(bias)
    lower = _members_last(lower_slope.reshape(members, -1, out_ch, maps_h, maps_w))
    upper = _members_last(upper_slope.reshape(members, -1, out_ch, maps_h, maps_w))
    offset = None if upper_offset is None else _members_last(upper_offset.reshape(members, -1, out_ch, maps_h, maps_w))
    centre, radius = centre.detach().contiguous(), radius.detach().contiguous()
    index = [t.to(torch.int64).contiguous() for t in (arow, lmap, umap, origin_y, origin_x, sample)]
    kernel_fn = getattr(lib, f"{name}{_width(members)}")
    kernel_fn(A.data_ptr(), index[0].data_ptr(), lower.data_ptr(), index[1].data_ptr(), upper.data_ptr(),
              None if offset is None else offset.data_ptr(), index[2].data_ptr(), index[3].data_ptr(),
              index[4].data_ptr(), weight.data_ptr(), bias.data_ptr(), centre.data_ptr(), radius.data_ptr(),
              index[5].data_ptr(), out.data_ptr(), A.shape[-1], index[0].shape[0], out_ch, height, width, in_ch,
              kernel, stride, padding, maps_h, maps_w, centre.shape[2], centre.shape[3], torch.get_num_threads())


def conv_members_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                         padding: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Per-member activations [P, N, C, H, W] through per-member weights [P, O, C, k, k] (and bias [P, O]):
    [P, N, O, Ho, Wo], a members-last view."""
    lib = library()
    assert lib is not None
    members, rows, channels, height, width = x.shape
    out_ch, kernel = weight.shape[1], weight.shape[3]
    x_last, weight_last = _members_last(x), _members_last(weight)
    bias_last = None if bias is None else _members_last(bias)
    lanes = x_last.shape[-1]
    out = torch.empty(rows, out_ch, *out_hw, lanes, dtype=x.dtype)
    kernel_fn = getattr(lib, f"gls_conv_members_forward{_width(members)}")
    kernel_fn(x_last.data_ptr(), weight_last.data_ptr(), None if bias_last is None else bias_last.data_ptr(),
              out.data_ptr(), lanes, rows, channels, height, width, out_ch, kernel, stride, padding, out_hw[0],
              out_hw[1], torch.get_num_threads())
    return out[..., :members].permute(4, 0, 1, 2, 3)


def relax_forward(coefficient: torch.Tensor, pre_activation: torch.Tensor, lower_slope: torch.Tensor,
                  upper_slope: torch.Tensor, upper_offset: torch.Tensor | None, umap: torch.Tensor,
                  weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int,
                  out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha-CROWN's slope gradient on a ReLU's map and the rows' relaxed network through the next convolution.

    ``coefficient``, ``pre_activation``, ``lower_slope``: [P, N, O, H, W] per row; ``upper_slope`` and
    ``upper_offset``: [P, M, O, H, W], row n reading map ``umap[n]``; ``weight`` [P, O2, O, k, k], ``bias``
    [P, O2]. Returns (max(coefficient, 0) * pre_activation, bias + conv(the row's line at pre_activation)),
    [P, N, O, H, W] and [P, N, O2, Ho, Wo], as members-last views.
    """
    lib = library()
    assert lib is not None
    members, rows, channels, height, width = coefficient.shape
    out_ch, kernel = weight.shape[1], weight.shape[3]
    tensors = [_members_last(t) for t in (coefficient, pre_activation, lower_slope, upper_slope, weight, bias)]
    offset = None if upper_offset is None else _members_last(upper_offset)
    lanes = tensors[0].shape[-1]
    grad = torch.empty(rows, channels, height, width, lanes, dtype=coefficient.dtype)
    following = torch.empty(rows, out_ch, *out_hw, lanes, dtype=coefficient.dtype)
    index = umap.to(torch.int64).contiguous()
    kernel_fn = getattr(lib, f"gls_relax_forward{_width(members)}")
    kernel_fn(*(t.data_ptr() for t in tensors[:4]), None if offset is None else offset.data_ptr(), index.data_ptr(),
              tensors[4].data_ptr(), tensors[5].data_ptr(), grad.data_ptr(), following.data_ptr(), lanes, rows,
              channels, height, width, out_ch, kernel, stride, padding, out_hw[0], out_hw[1],
              torch.get_num_threads())
    return grad[..., :members].permute(4, 0, 1, 2, 3), following[..., :members].permute(4, 0, 1, 2, 3)


LANES = WIDTHS[-1]  # the widest vector block: populations are chunked in multiples of it


def empty_members_last(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised [P, ...] CPU tensor stored members-last (P innermost): written by an elementwise
    operation (``out=``), it and everything computed from it elementwise keep that layout, so the kernels
    read it without a copy when P is a whole number of vector blocks."""
    return torch.empty(*shape[1:], shape[0], dtype=dtype).movedim(-1, 0)


def _members_last(t: torch.Tensor) -> torch.Tensor:
    """[P, ...] -> contiguous [..., P'], padded with zero members to whole vector blocks (the kernels vectorise
    over members)."""
    width = _width(t.shape[0])
    view = t.detach().movedim(0, -1)
    if t.shape[0] % width == 0 and view.is_contiguous():
        return view  # already members-last (the output of conv_rows_transpose)
    padded = -(-t.shape[0] // width) * width
    layout = _member_blocks(t)
    if layout is not None and t.dtype == torch.float32 and t.device.type == "cpu" and library() is not None:
        out = torch.empty(*t.shape[1:], padded, dtype=t.dtype)
        library().gls_members_last(t.data_ptr(), out.data_ptr(), t.shape[0], *layout, padded,  # type: ignore[union-attr]
                                   torch.get_num_threads())
        return out
    out = t.new_zeros(*t.shape[1:], padded)
    out[..., : t.shape[0]] = view
    return out


def _member_blocks(t: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(B, Q, member stride, batch stride) when each member's elements are B contiguous blocks of Q floats:
    a members-first tensor (B = 1), or a [P, B, ...] view with the batch axis outermost (an interval step's
    output). None otherwise (the copy is left to torch)."""
    if t.dim() < 2 or t.numel() == 0:
        return None
    if t.is_contiguous():
        return 1, t[0].numel(), t.stride(0), 0
    inner = t[0, 0]
    if inner.is_contiguous() and t.stride(0) == inner.numel() and t.stride(1) == t.shape[0] * inner.numel():
        return t.shape[1], inner.numel(), t.stride(0), t.stride(1)
    return None
