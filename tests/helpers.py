"""Shared builders and empirical checks for the gls_core tests.

Shapes use the package's letters: P members, B inputs, S sampled points, K specification rows.
The reference outputs come from ``to_sequential`` (plain ``torch.nn`` modules, one per member), so
the soundness checks do not rely on the population code they are testing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import gls_core
from gls_core.nets import NetSpec

# Every relaxation, with the alpha-CROWN settings worth checking separately.
METHOD_CASES: dict[str, tuple[str, dict[str, object]]] = {
    "ibp": ("ibp", {}),
    "hbox": ("hbox", {}),
    "crown-ibp": ("crown-ibp", {}),
    "deeppoly": ("deeppoly", {}),
    "crown": ("crown", {}),
    "alpha-crown": ("alpha-crown", {}),
    "alpha-crown-dp3": ("alpha-crown", {"init": "deeppoly", "steps": 3, "step_size": 0.1}),
}
DIFFERENTIABLE_METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly")


def tolerance(value: torch.Tensor, rel: float = 1e-4) -> torch.Tensor:
    """float32 slack for comparing a bound with a value: rel * (1 + |value|)."""
    return rel * (1.0 + value.abs())


def region(x: torch.Tensor, eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input region [max(x - eps, 0), min(x + eps, 1)], computed independently of gls_core."""
    radius = torch.as_tensor(eps, dtype=x.dtype)
    if radius.dim() == 1:
        radius = radius.view(-1, *([1] * (x.dim() - 1)))
    return (x - radius).clamp(0, 1), (x + radius).clamp(0, 1)


def members(spec: NetSpec, params: torch.Tensor) -> list[torch.nn.Sequential]:
    """One plain ``nn.Sequential`` per population member (P x D, or D)."""
    population = params.detach().reshape(-1, spec.num_params)
    return [gls_core.to_sequential(spec, theta).eval() for theta in population]


def apply_spec(C: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """C @ logits for logits [B, S, classes] and C [B, K, classes] (None: the logits): [B, S, K]."""
    if C is None:
        return logits
    return torch.einsum("bkc,bsc->bsk", C.to(logits.dtype), logits)


def outputs(net: torch.nn.Module, points: torch.Tensor, C: torch.Tensor | None) -> torch.Tensor:
    """C @ net(points) for points [B, S, *shape]: [B, S, K]."""
    batch, samples = points.shape[:2]
    logits = net(points.reshape(batch * samples, *points.shape[2:]))
    return apply_spec(C, logits.view(batch, samples, -1))


def uniform_points(lower: torch.Tensor, upper: torch.Tensor, samples: int, generator: torch.Generator
                   ) -> torch.Tensor:
    """``samples`` uniform points of the box per input: [B, S, *shape]."""
    u = torch.rand(lower.shape[0], samples, *lower.shape[1:], generator=generator)
    return lower.unsqueeze(1) + (upper - lower).unsqueeze(1) * u


def corner_points(lower: torch.Tensor, upper: torch.Tensor, samples: int, generator: torch.Generator
                  ) -> torch.Tensor:
    """``samples`` random corners of the box per input (every coordinate at one of its ends)."""
    pick = torch.rand(lower.shape[0], samples, *lower.shape[1:], generator=generator) < 0.5
    return torch.where(pick, upper.unsqueeze(1), lower.unsqueeze(1))


def pgd_extremes(net: torch.nn.Module, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor | None,
                 rows: int, generator: torch.Generator, steps: int = 15, restarts: int = 2
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest C @ net(x') found by signed-gradient ascent/descent per row: ([B, K], [B, K]).

    Every (input, row, direction, restart) is its own point in one batch, so the gradient of the
    summed objective moves each point on its own objective only.
    """
    batch, shape = lower.shape[0], lower.shape[1:]
    lo = lower.view(batch, 1, 1, 1, *shape)
    hi = upper.view(batch, 1, 1, 1, *shape)
    u = torch.rand(batch, rows, 2, restarts, *shape, generator=generator)
    u[:, :, :, 0] = 0.5  # one start from the centre
    point = lo + (hi - lo) * u
    sign = torch.tensor([1.0, -1.0]).view(1, 1, 2, 1)  # +: maximise, -: minimise
    row_index = torch.arange(rows).view(1, rows, 1, 1)
    best_max = torch.full((batch, rows), -math.inf)
    best_min = torch.full((batch, rows), math.inf)
    step = (hi - lo) / 4
    for iteration in range(steps + 1):
        point = point.detach().requires_grad_(True)
        flat = point.reshape(batch, rows * 2 * restarts, *shape)
        values = outputs(net, flat, C).view(batch, rows, 2, restarts, -1)
        own = values.gather(-1, row_index.expand(batch, rows, 2, restarts).unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            best_max = torch.maximum(best_max, own[:, :, 0].max(-1).values)
            best_min = torch.minimum(best_min, own[:, :, 1].min(-1).values)
        if iteration == steps:
            break
        (grad,) = torch.autograd.grad((own * sign).sum(), point)
        with torch.no_grad():
            point = torch.minimum(torch.maximum(point + step * grad.sign(), lo), hi)
            if iteration % 5 == 4:
                step = step / 2
    return best_min, best_max


@dataclass
class Empirical:
    """Smallest and largest observed C @ logits per member, input and row: [P, B, K] each."""

    low: torch.Tensor
    high: torch.Tensor


def empirical_extremes(spec: NetSpec, params: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor,
                       C: torch.Tensor | None, generator: torch.Generator, samples: int = 64, corners: int = 32,
                       pgd_steps: int = 15) -> Empirical:
    """Outputs at uniform points, random corners and PGD points of the region, for every member."""
    lower, upper = region(x, eps)
    rows = spec.num_outputs if C is None else C.shape[1]
    points = torch.cat([uniform_points(lower, upper, samples, generator),
                        corner_points(lower, upper, corners, generator), x.unsqueeze(1)], dim=1)
    lows, highs = [], []
    for net in members(spec, params):
        with torch.no_grad():
            values = outputs(net, points, C)  # [B, S, K]
        pgd_min, pgd_max = pgd_extremes(net, lower, upper, C, rows, generator, steps=pgd_steps)
        lows.append(torch.minimum(values.min(1).values, pgd_min))
        highs.append(torch.maximum(values.max(1).values, pgd_max))
    return Empirical(torch.stack(lows), torch.stack(highs))


def assert_contains(lower: torch.Tensor, upper: torch.Tensor, seen: Empirical, label: str,
                    rel: float = 1e-4) -> None:
    """lower <= every observed value <= upper (with float32 slack), and lower <= upper."""
    assert lower.shape == seen.low.shape, f"{label}: bounds {tuple(lower.shape)} vs outputs {tuple(seen.low.shape)}"
    assert torch.isfinite(lower).all() and torch.isfinite(upper).all(), f"{label}: non-finite bounds"
    below = seen.low - lower + tolerance(seen.low, rel)
    above = upper - seen.high + tolerance(seen.high, rel)
    assert (below >= 0).all(), (
        f"{label}: lower bound above an attained value by {float(-below.min()):.3g} "
        f"(lower {lower[below < 0][:4].tolist()}, attained {seen.low[below < 0][:4].tolist()})")
    assert (above >= 0).all(), (
        f"{label}: upper bound below an attained value by {float(-above.min()):.3g} "
        f"(upper {upper[above < 0][:4].tolist()}, attained {seen.high[above < 0][:4].tolist()})")
    assert (lower <= upper + tolerance(upper, rel)).all(), f"{label}: lower > upper"


def random_population(spec: NetSpec, size: int, generator: torch.Generator, scale: float = 1.0,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``size`` independent Kaiming-uniform members, scaled: P x D."""
    return torch.stack([gls_core.kaiming_uniform(spec, generator) * scale for _ in range(size)]).to(dtype)


def random_inputs(spec: NetSpec, batch: int, generator: torch.Generator, saturate: float = 0.2) -> torch.Tensor:
    """Inputs in [0, 1], a fraction ``saturate`` of coordinates exactly at 0 or 1 (the region gets clipped)."""
    x = torch.rand(batch, *spec.input_shape, generator=generator)
    edge = torch.rand(x.shape, generator=generator) < saturate
    ends = (torch.rand(x.shape, generator=generator) < 0.5).to(x.dtype)
    return torch.where(edge, ends, x)


def random_spec_matrix(kind: str, batch: int, classes: int, generator: torch.Generator) -> torch.Tensor | None:
    """None (the logits), the margin specification of random labels, or a dense random C."""
    if kind == "none":
        return None
    if kind == "margin":
        labels = torch.randint(0, classes, (batch,), generator=generator)
        return gls_core.margin_spec(labels, classes)
    return torch.randn(batch, 3, classes, generator=generator)


def bounds(net: NetSpec | torch.nn.Sequential, x: torch.Tensor, eps: float | torch.Tensor, case: str,
           C: torch.Tensor | None = None, params: torch.Tensor | None = None,
           **extra: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute_bounds`` for a named entry of :data:`METHOD_CASES`."""
    method, options = METHOD_CASES[case]
    return gls_core.compute_bounds(net, x, eps, method, C=C, params=params, **options, **extra)

