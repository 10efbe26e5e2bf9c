"""Affine layers applied with a different weight set per population member.

Shapes use fixed letters: P members, B inputs, N coefficient rows, C/O channels, D parameters.
Activations are ``[P, B, *shape]``; a network input shared by all members is ``[B, *shape]``.
Every operation is one batched kernel call over the whole population, never a loop over members.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .nets.spec import Conv2d, Normalize


def normalize_constants(layer: Normalize, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(layer.mean, dtype=like.dtype, device=like.device).view(-1, 1, 1)
    std = torch.tensor(layer.std, dtype=like.dtype, device=like.device).view(-1, 1, 1)
    return mean, std


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: Conv2d,
                 shared_input: bool = False) -> torch.Tensor:
    """Convolve ``x`` ([P, B, C, H, W], or [B, C, H, W] when ``shared_input``) with ``weight`` [P, O, C, k, k]."""
    members, out_channels = weight.shape[0], weight.shape[1]
    flat_weight = weight.reshape(members * out_channels, *weight.shape[2:])
    flat_bias = None if bias is None else bias.reshape(-1)
    if shared_input:
        out = F.conv2d(x, flat_weight, flat_bias, stride=conv.stride, padding=conv.padding)
    else:
        batch = x.shape[1]
        grouped = x.transpose(0, 1).reshape(batch, members * x.shape[2], *x.shape[3:])
        out = F.conv2d(grouped, flat_weight, flat_bias, stride=conv.stride, padding=conv.padding, groups=members)
    # [B, P*O, Ho, Wo] -> [P, B, O, Ho, Wo] as a view; the next grouped conv undoes the transpose for free.
    return out.view(out.shape[0], members, out_channels, *out.shape[2:]).transpose(0, 1)


def matmul_ready(x: torch.Tensor) -> torch.Tensor:
    """``x`` laid out as a batched matmul reads it at full speed: unit stride in one of its last two dims.

    The walk keeps its maps members-last (unit stride on P, for the native kernels); torch's bmm has no
    BLAS path for that layout: 3.4x slower than on a copy with one thread, 30-65x with two threads on a
    busy machine. The copy costs about one pass over the map.
    """
    return x if x.dim() < 2 or x.stride(-1) == 1 or x.stride(-2) == 1 else x.contiguous()


def linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   shared_input: bool = False) -> torch.Tensor:
    """``x`` [P, B, I] (or [B, I] shared) times ``weight`` [P, O, I]^T plus ``bias`` [P, O]."""
    x = matmul_ready(x)
    if shared_input:
        x = x.unsqueeze(0).expand(weight.shape[0], *x.shape)
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def conv_transpose_polyphase(images: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """Full transposed convolution (no padding, no cropping) with a weight per member.

    ``images`` [P, N, O, h, w], ``weight`` [P, O, C, k, k] -> [P, N, C, (h-1)s+k, (w-1)s+k].
    The stride-s transposed convolution splits into s*s phases, each an ordinary convolution
    with a ceil(k/s)-tap kernel, so all phases become one batched matmul of a windowed input
    and the arithmetic is the convolution's own. Used for receptive-field coefficients whose
    dense composition matrix would be too large (timings in docs/relaxations.md).
    """
    members, rows, out_ch, height, width = images.shape
    in_ch, kernel = weight.shape[2], weight.shape[3]
    taps = -(-kernel // stride)
    padded_kernel = taps * stride
    w = F.pad(weight, (0, padded_kernel - kernel, 0, padded_kernel - kernel))
    # kernel index u = a*s + r; the unfolded window runs over e = taps-1-a.
    w = w.view(members, out_ch, in_ch, taps, stride, taps, stride).flip(3, 5)
    w = w.permute(0, 1, 3, 5, 4, 6, 2).reshape(members, out_ch * taps * taps, stride * stride * in_ch)
    grid_h, grid_w = height + taps - 1, width + taps - 1
    # Windows of the padded input as a strided view (F.unfold is pathologically slow on small maps).
    padded = F.pad(images.reshape(members * rows, out_ch, height, width), (taps - 1,) * 4).contiguous()
    n, c, h, ww = padded.stride()
    cols = padded.as_strided((members * rows, grid_h, grid_w, out_ch, taps, taps), (n, h, ww, c, h, ww))
    out = torch.matmul(cols.reshape(members, rows * grid_h * grid_w, -1), w)
    out = out.view(members, rows, grid_h, grid_w, stride, stride, in_ch).permute(0, 1, 6, 2, 4, 3, 5)
    out = out.reshape(members, rows, in_ch, grid_h * stride, grid_w * stride)
    full_h, full_w = (height - 1) * stride + kernel, (width - 1) * stride + kernel
    return out[..., :full_h, :full_w]


def conv_transpose_matrix(weight: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """Per-member dense matrix of the full transposed convolution on an (O, h, w) patch.

    [P, O*h*w, C*h'*w']; built by transposing the identity basis, so it agrees with
    :func:`conv_transpose_polyphase` by construction.
    """
    members, out_ch = weight.shape[0], weight.shape[1]
    size = out_ch * height * width
    basis = torch.eye(size, dtype=weight.dtype, device=weight.device).view(1, size, out_ch, height, width)
    composed = conv_transpose_polyphase(basis.expand(members, -1, -1, -1, -1), weight, stride)
    return composed.reshape(members, size, -1)


def conv_transpose_cost(out_ch: int, height: int, width: int, weight_shape: torch.Size,
                        stride: int) -> tuple[float, float]:
    """Relative cost of (dense matrix, polyphase) per image, in matmul-equivalent operations.

    The polyphase path moves ``taps^2`` copies of every input through memory, which on these CPUs
    costs about as much as 16 multiply-adds per float; the dense path wastes arithmetic on the
    zeros of the composed matrix but runs as one large matmul.
    """
    in_ch, kernel = weight_shape[1], weight_shape[2]
    taps = -(-kernel // stride)
    full = ((height - 1) * stride + kernel) * ((width - 1) * stride + kernel)
    dense = float(out_ch * height * width * in_ch * full)
    grid = (height + taps - 1) * (width + taps - 1)
    poly = float(grid * out_ch * taps * taps * (stride * stride * in_ch + 16))
    return dense, poly
