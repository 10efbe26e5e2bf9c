"""The figure of a :class:`~gls_core.landscape.Landscape`: raw and smoothed robust losses, as in the paper's Figure 4.

Losses are divided by each curve's value at the trained weights (offset 0), so relaxations whose
losses differ in scale share an axis and a loss above 1 means worse than the trained point.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .landscape import Landscape

if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLORS = {"ibp": "tab:blue", "hbox": "tab:purple", "crown-ibp": "tab:orange", "deeppoly": "tab:green",
          "alpha-crown": "tab:red"}


def _centre(values: torch.Tensor) -> float:
    index = tuple(size // 2 for size in values.shape)
    return float(values[index])


def _line_panel(axis: Axes, landscape: Landscape, sigma: float | None) -> None:
    xs = landscape.offsets.tolist()
    for method, raw in landscape.raw.items():
        color = COLORS.get(method)
        if sigma is None:
            scale = _centre(raw)
            axis.plot(xs, (raw / scale).tolist(), color=color, label=method, lw=1.2)
            continue
        mean, error = landscape.smoothed[(method, sigma)]
        scale = _centre(mean)
        axis.plot(xs, (mean / scale).tolist(), color=color, label=method, lw=1.2)
        axis.fill_between(xs, ((mean - 1.96 * error) / scale).tolist(), ((mean + 1.96 * error) / scale).tolist(),
                          color=color, alpha=0.25, lw=0)
    title = "original loss" if sigma is None else f"smoothed, sigma = {sigma:g} ({landscape.samples} samples, 95% CI)"
    axis.set(title=title, xlabel=f"offset along the {landscape.direction} direction (L2 norm)",
             ylabel="loss / loss at 0")
    axis.axvline(0.0, color="grey", lw=0.6, ls=":")
    axis.legend(fontsize=8)


def _contour_panel(axis: Axes, landscape: Landscape, method: str, sigma: float | None) -> None:
    values = landscape.raw[method] if sigma is None else landscape.smoothed[(method, sigma)][0]
    grid = landscape.offsets.tolist()
    image = axis.contourf(grid, grid, (values / _centre(values)).T.tolist(), levels=20, cmap="viridis")
    axis.figure.colorbar(image, ax=axis)
    which = "original" if sigma is None else f"sigma {sigma:g}"
    axis.set(title=f"{method}, {which}", xlabel="direction 1", ylabel="direction 2")
    axis.plot([0], [0], marker="+", color="white")


def plot_landscape(landscape: Landscape, path: Path, title: str = "") -> Path:
    """Write the figure: one panel per sigma (1-D), or methods x sigmas contour panels (2-D)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas: list[float | None] = [None, *sorted({sigma for _, sigma in landscape.smoothed})]
    methods = list(landscape.raw)
    if landscape.dimensions == 1:
        columns = 2 if len(sigmas) > 2 else len(sigmas)
        rows = -(-len(sigmas) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.4 * rows), squeeze=False)
        for axis, sigma in zip(axes.flat, sigmas):
            _line_panel(axis, landscape, sigma)
        for axis in list(axes.flat)[len(sigmas):]:
            axis.set_visible(False)
    else:
        figure, axes = plt.subplots(len(methods), len(sigmas), figsize=(4.8 * len(sigmas), 4 * len(methods)),
                                    squeeze=False)
        for row, method in enumerate(methods):
            for column, sigma in enumerate(sigmas):
                _contour_panel(axes[row][column], landscape, method, sigma)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=90)
    plt.close(figure)
    tmp.replace(path)
    return path
