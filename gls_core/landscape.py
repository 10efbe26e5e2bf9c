"""Loss landscapes around trained weights: the robust loss along directions in weight space, raw and smoothed.

This is the picture behind the paper's argument (its Figure 4): tight relaxations (CROWN-IBP,
DeepPoly) give a robust loss that is discontinuous and sensitive to small weight changes, IBP's is
smooth, and Gaussian loss smoothing, E_z[L(theta + sigma z)], is what PGPE optimises instead. Every
point of a line, and every perturbation of every point, is one member of a population evaluated by
each relaxation, as in training (in chunks, with progress between them). The perturbations are
shared by all points (common random numbers), so the smoothed curve's wiggles are the loss's own,
not sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .bounds import compute_bounds, margin_spec
from .losses import robust_loss
from .nets.spec import NetSpec

DIRECTIONS = ("gradient", "random")
# Weight vectors per population evaluation: a whole number of the native kernels' vector blocks, small
# enough for progress between chunks, large enough that the member-vectorised kernels run at full speed.
PROGRESS_CHUNK = 512


@dataclass(frozen=True)
class Landscape:
    """Robust losses on a grid ``offsets`` (1-D) or ``offsets x offsets`` (2-D) around theta.

    ``raw[method]`` has the grid's shape; ``smoothed[(method, sigma)]`` holds (mean, standard error)
    over the ``samples`` perturbations, each of the grid's shape.
    """

    offsets: torch.Tensor
    dimensions: int
    raw: dict[str, torch.Tensor]
    smoothed: dict[tuple[str, float], tuple[torch.Tensor, torch.Tensor]]
    samples: int
    direction: str


def _unit(vector: torch.Tensor) -> torch.Tensor:
    norm = vector.norm()
    if not norm > 0:
        raise ValueError("the direction is zero (the gradient vanishes on these inputs); use --direction random")
    return vector / norm


def population_loss(spec: NetSpec, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                    method: str) -> torch.Tensor:
    """Mean robust cross-entropy over the inputs, per member: [P]."""
    _, upper = compute_bounds(spec, x, eps, method, C=margin_spec(y, spec.num_outputs), params=params,
                              sides="upper")
    return robust_loss(upper).mean(dim=-1)


def gradient_direction(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                       method: str) -> torch.Tensor:
    """The unit gradient of the robust loss at theta (the paper's Figure 4 uses DeepPoly's)."""
    point = theta.detach().clone().requires_grad_(True)
    loss = population_loss(spec, point, x, y, eps, method)
    grad, = torch.autograd.grad(loss.sum(), point)
    return _unit(grad)


def directions(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, kind: str,
               dimensions: int, generator: torch.Generator, gradient_method: str = "deeppoly") -> torch.Tensor:
    """``dimensions`` orthonormal unit directions, [dimensions, D]: the gradient (and random ones), or random."""
    if kind not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {kind!r}")
    if dimensions not in (1, 2):
        raise ValueError(f"dimensions must be 1 or 2, got {dimensions}")
    basis: list[torch.Tensor] = []
    if kind == "gradient":
        basis.append(gradient_direction(spec, theta, x, y, eps, gradient_method))
    while len(basis) < dimensions:
        candidate = torch.randn(theta.numel(), generator=generator, dtype=theta.dtype)
        for existing in basis:
            candidate = candidate - (candidate @ existing) * existing
        basis.append(_unit(candidate))
    return torch.stack(basis)


def grid_points(theta: torch.Tensor, basis: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """theta + a d1 (+ b d2) for every grid point, [points, D] in row-major grid order."""
    if basis.shape[0] == 1:
        return theta + offsets[:, None] * basis[0]
    a, b = torch.meshgrid(offsets, offsets, indexing="ij")
    return theta + a.reshape(-1, 1) * basis[0] + b.reshape(-1, 1) * basis[1]


def population_size(points: int, dimensions: int, sigmas: Sequence[float], samples: int) -> int:
    """Weight vectors one method evaluates: every grid point, and ``samples`` perturbations of it per sigma."""
    return points ** dimensions * (1 + len(sigmas) * samples)


def loss_landscape(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                   methods: Sequence[str], *, radius: float, points: int = 41, dimensions: int = 1,
                   direction: str = "gradient", sigmas: Sequence[float] = (), samples: int = 32,
                   seed: int = 0, progress: Callable[[int, str], None] | None = None) -> Landscape:
    """The robust loss of each method on a grid of ``points`` per axis in [-radius, radius] around theta.

    For each sigma, the smoothed loss at a point is the mean over ``samples`` perturbations
    theta_point + sigma z_k (the same z_k at every point), with its standard error. ``progress``
    is called with the weight vectors evaluated so far (of ``len(methods)`` times
    :func:`population_size`) and the method evaluating them, after every ``PROGRESS_CHUNK`` of them.
    """
    if not radius > 0 or not math.isfinite(radius):
        raise ValueError(f"radius must be a positive number, got {radius}")
    if points < 3:
        raise ValueError(f"points must be >= 3, got {points}")
    if sigmas and samples < 2:
        raise ValueError(f"samples must be >= 2 to estimate a smoothed loss, got {samples}")
    if any(not s > 0 for s in sigmas):
        raise ValueError(f"every sigma must be > 0, got {list(sigmas)}")
    theta = theta.detach().reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    basis = directions(spec, theta, x, y, eps, direction, dimensions, generator)
    offsets = torch.linspace(-radius, radius, points, dtype=theta.dtype)
    grid = grid_points(theta, basis, offsets)
    shape = (points,) * dimensions
    noise = torch.randn(samples, theta.numel(), generator=generator, dtype=theta.dtype) if sigmas else None
    members = [grid]
    for sigma in sigmas:
        assert noise is not None
        members.append((grid[:, None, :] + sigma * noise[None]).reshape(-1, theta.numel()))
    population = torch.cat(members)
    raw: dict[str, torch.Tensor] = {}
    smoothed: dict[tuple[str, float], tuple[torch.Tensor, torch.Tensor]] = {}
    done = 0
    with torch.no_grad():
        for method in methods:
            parts = []
            for start in range(0, population.shape[0], PROGRESS_CHUNK):
                parts.append(population_loss(spec, population[start:start + PROGRESS_CHUNK], x, y, eps, method))
                done += parts[-1].shape[0]
                if progress is not None:
                    progress(done, method)
            losses = torch.cat(parts)
            raw[method] = losses[:grid.shape[0]].reshape(shape)
            rest = losses[grid.shape[0]:].reshape(len(sigmas), grid.shape[0], samples) if sigmas else None
            for index, sigma in enumerate(sigmas):
                assert rest is not None
                values = rest[index]
                smoothed[(method, float(sigma))] = (values.mean(dim=-1).reshape(shape),
                                                    (values.std(dim=-1) / math.sqrt(samples)).reshape(shape))
    return Landscape(offsets, dimensions, raw, smoothed, samples, direction)
