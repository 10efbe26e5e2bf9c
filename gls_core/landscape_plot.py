"""The figure of a :class:`~gls_core.landscape.Landscape`: raw and smoothed robust losses, as in the paper's Figure 4.

Losses are divided by each curve's value at the trained weights (offset 0), so relaxations whose
losses differ in scale share an axis and a loss above 1 means worse than the trained point.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .landscape import Landscape
from .relaxations import ALPHA_CROWN, CROWN_IBP, DEEPPOLY, HBOX, IBP

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = {IBP: "tab:blue", HBOX: "tab:purple", CROWN_IBP: "tab:orange", DEEPPOLY: "tab:green",
          ALPHA_CROWN: "tab:red"}
# Relaxations whose losses nearly coincide (crown-ibp and deeppoly on a trained network) stay visible:
# the wide solid lines are drawn first, the dashed and dotted ones on top of them.
STYLES: dict[str, dict[str, object]] = {
    IBP: {"lw": 1.4, "ls": "-", "zorder": 2},
    DEEPPOLY: {"lw": 3.0, "ls": "-", "alpha": 0.7, "zorder": 1},
    HBOX: {"lw": 1.4, "ls": "-.", "zorder": 3},
    CROWN_IBP: {"lw": 1.6, "ls": "--", "zorder": 4},
    ALPHA_CROWN: {"lw": 1.6, "ls": ":", "zorder": 5},
}


def _centre(values: torch.Tensor) -> float:
    index = tuple(size // 2 for size in values.shape)
    return float(values[index])


def _style(method: str) -> dict[str, object]:
    return {"color": COLORS.get(method), "lw": 1.2, **STYLES.get(method, {})}


def _line_panel(axis: Axes, landscape: Landscape, sigma: float | None, run: str) -> None:
    xs = landscape.offsets.tolist()
    for method, raw in landscape.raw.items():
        style = _style(method)
        if sigma is None:
            scale = _centre(raw)
            axis.plot(xs, (raw / scale).tolist(), label=method, **style)  # type: ignore[arg-type]
            continue
        mean, error = landscape.smoothed[(method, sigma)]
        scale = _centre(mean)
        axis.plot(xs, (mean / scale).tolist(), label=method, **style)  # type: ignore[arg-type]
        axis.fill_between(xs, ((mean - 1.96 * error) / scale).tolist(), ((mean + 1.96 * error) / scale).tolist(),
                          color=style["color"], alpha=0.25, lw=0)
    which = "original loss" if sigma is None else f"smoothed, sigma = {sigma:g} ({landscape.samples} samples, 95% CI)"
    axis.set_title(panel_title(run, list(landscape.raw), which), fontsize=10)
    axis.set(ylabel="loss / loss at 0", xlabel=f"offset along the {landscape.direction} direction (L2 norm)")
    axis.axvline(0.0, color="grey", lw=0.6, ls=":")
    axis.legend(fontsize=8, loc="best", frameon=True)


def panel_title(run: str, methods: list[str], which: str) -> str:
    """``run: methods`` over ``which``: each panel says whose loss, under which relaxation, it shows."""
    named = ", ".join(methods)
    return f"{run}: {named}\n{which}" if run else f"{named}\n{which}"


def _contour_panel(axis: Axes, landscape: Landscape, method: str, sigma: float | None, run: str) -> None:
    values = landscape.raw[method] if sigma is None else landscape.smoothed[(method, sigma)][0]
    grid = landscape.offsets.tolist()
    image = axis.contourf(grid, grid, (values / _centre(values)).T.tolist(), levels=20, cmap="viridis")
    axis.figure.colorbar(image, ax=axis)
    which = "original" if sigma is None else f"sigma {sigma:g}"
    axis.set_title(panel_title(run, [method], which), fontsize=10)
    axis.set(xlabel="direction 1", ylabel="direction 2")
    axis.plot([0], [0], marker="+", color="white")


def landscape_figure(landscape: Landscape, title: str = "", run: str | None = None) -> Figure:
    """One panel per sigma (1-D), or methods x sigmas contour panels (2-D); the caller closes the figure.

    ``run`` names the model in each panel's title; without it, the part of ``title`` before its first
    ``": "`` (titles read ``run: ...``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if run is None:
        run = title.split(": ", 1)[0] if ": " in title else ""
    sigmas: list[float | None] = [None, *sorted({sigma for _, sigma in landscape.smoothed})]
    methods = list(landscape.raw)
    if landscape.dimensions == 1:
        columns = len(sigmas) if len(sigmas) <= 3 else (2 if len(sigmas) == 4 else 3)  # no empty cell up to 4
        rows = -(-len(sigmas) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.4 * rows), squeeze=False)
        for axis, sigma in zip(axes.flat, sigmas):
            _line_panel(axis, landscape, sigma, run)
        for axis in list(axes.flat)[len(sigmas):]:
            figure.delaxes(axis)
    else:
        figure, axes = plt.subplots(len(methods), len(sigmas), figsize=(4.8 * len(sigmas), 4 * len(methods)),
                                    squeeze=False)
        for row, method in enumerate(methods):
            for column, sigma in enumerate(sigmas):
                _contour_panel(axes[row][column], landscape, method, sigma, run)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_landscape(landscape: Landscape, path: Path, title: str = "", run: str | None = None) -> Path:
    """Write :func:`landscape_figure` to ``path`` (atomically)."""
    import matplotlib.pyplot as plt

    figure = landscape_figure(landscape, title, run)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=90)
    plt.close(figure)
    tmp.replace(path)
    return path
