"""Training curves as PNG, read back from metrics rows (a run's metrics.jsonl or a cluster job's metrics).

Panels: the training loss per stage (a PGD warm-up's adversarial loss is not the robust loss of
the main stage, so each stage is its own line, with the boundary marked), test accuracies labelled
with the relaxation, eps and number of test inputs they were measured with, eps and lr over
training, and sigma (relative to its start) only for the estimators that have one (PGPE, RGS).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FILE = "curves.png"
STAGE_LABELS = {"warmup": "warm-up", "main": "main"}


def _plain(axis: Axes) -> None:
    """Tick labels as plain numbers: no offset such as ``1e-7+1e-3``, no exponent above the axis.

    The y labels keep as many digits as the tick spacing needs (sigma moves in its fifth digit).
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter

    values = ScalarFormatter(useOffset=False)
    values.set_scientific(False)
    axis.yaxis.set_major_formatter(values)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps: no two ticks rounded to one label
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


def _stage_spans(steps: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(stage, first step, last step) in order."""
    spans: list[tuple[str, int, int]] = []
    for row in steps:
        if spans and spans[-1][0] == row["stage"]:
            spans[-1] = (row["stage"], spans[-1][1], row["step"])
        else:
            spans.append((row["stage"], row["step"], row["step"]))
    return spans


def stage_boundary_label(before: str, after: str) -> str:
    """``warm-up → main``: the text at a stage boundary."""
    return f"{STAGE_LABELS.get(before, before)} \N{RIGHTWARDS ARROW} {STAGE_LABELS.get(after, after)}"


def _mark_stages(axis: Axes, spans: list[tuple[str, int, int]]) -> None:
    """A dashed vertical line at each stage change, labelled with the stages it separates."""
    for (before, _, _), (after, first, _) in zip(spans, spans[1:]):
        axis.axvline(first - 0.5, color="grey", linestyle="--", linewidth=0.8)
        axis.text(first - 0.5, 0.98, f"{stage_boundary_label(before, after)} ", transform=axis.get_xaxis_transform(),
                  rotation=90, ha="right", va="top", fontsize=7, color="dimgrey")


def _running_mean(values: list[float], window: int) -> list[float]:
    total, out = 0.0, []
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _loss_panel(axis: Axes, steps: list[dict[str, Any]], spans: list[tuple[str, int, int]],
                loss_names: dict[str, str]) -> None:
    for stage, first, last in spans:
        rows = [r for r in steps if r["stage"] == stage and first <= r["step"] <= last]
        xs, ys = [r["step"] for r in rows], [r["loss"] for r in rows]
        label = f"{STAGE_LABELS.get(stage, stage)}: {loss_names.get(stage, 'loss')}"
        line, = axis.plot(xs, ys, lw=0.5, alpha=0.35)
        axis.plot(xs, _running_mean(ys, max(1, len(ys) // 50)), lw=1.5, color=line.get_color(), label=label)
    axis.set(title="training loss (running mean)", xlabel="step", ylabel="loss")
    axis.legend(fontsize=8, loc="best", frameon=True)


def _accuracy_panel(axis: Axes, epochs: list[dict[str, Any]]) -> None:
    """One marker per evaluation (the lines between them are not measurements)."""
    if not epochs:
        axis.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=axis.transAxes)
    last = epochs[-1] if epochs else {}
    certified = (f"certified ({last.get('method', '?')}, eps {last.get('eps', '?')}, "
                 f"{last.get('n', '?')} test inputs)")
    for key, label, marker in (("natural_acc", "natural", "o"), ("adversarial_acc", "PGD-adversarial", "s"),
                               ("certified_acc", certified, "^")):
        axis.plot([r["step"] for r in epochs], [100 * r[key] for r in epochs], marker=marker, markersize=5,
                  lw=1, label=label)
    counted = "1 evaluation" if len(epochs) == 1 else f"{len(epochs)} evaluations, one marker each"
    axis.set(title=f"test accuracy ({counted})", xlabel="step", ylabel="%")
    if epochs:  # below the axes: inside, it would cover a line whichever corner it took
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=True)


def _compact(axis: Axes) -> None:
    """Y tick labels with three significant digits (``0.0003``, ``1e-05``): a learning rate stays readable."""
    from matplotlib.ticker import FuncFormatter

    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))


def _eps_panel(axis: Axes, steps: list[dict[str, Any]]) -> None:
    axis.plot([r["step"] for r in steps], [r["eps"] for r in steps], color="tab:blue", label="eps (training)")
    axis.set(title="eps and learning rate", ylabel="eps")
    axis.tick_params(labelbottom=False)
    axis.legend(fontsize=8, loc="best", frameon=True)


def _lr_panel(axis: Axes, steps: list[dict[str, Any]]) -> None:
    axis.plot([r["step"] for r in steps], [r["lr"] for r in steps], color="tab:red", label="learning rate")
    axis.set(xlabel="step", ylabel="lr")
    axis.legend(fontsize=8, loc="best", frameon=True)


def _sigma_panel(axis: Axes, steps: list[dict[str, Any]]) -> None:
    """Sigma divided by its first value: it moves in its fourth digit, which absolute tick labels bury."""
    rows = [r for r in steps if "sigma" in r]
    start = rows[0]["sigma"] if rows else 1.0
    axis.plot([r["step"] for r in rows], [r["sigma"] / start if start else r["sigma"] for r in rows],
              label=f"sigma / sigma at step {rows[0]['step'] if rows else 0} ({start:.3g})")
    axis.set(title="sigma (mean over weights), relative to its start", xlabel="step", ylabel="sigma / start")
    axis.legend(fontsize=8, loc="best", frameon=True)


def build_curves_figure(rows: list[dict[str, Any]], config: Any = None) -> Figure:
    """The curves of ``rows`` as a matplotlib Figure (the caller closes it)."""
    title = curves_title(config) if config is not None else None
    loss_names = loss_names_of(config) if config is not None else None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row for row in rows if row.get("kind") == "step"]
    epochs = [row for row in rows if row.get("kind") == "epoch"]
    spans = _stage_spans(steps)
    with_sigma = any("sigma" in row for row in steps)
    rows_, columns = (2, 2) if with_sigma else (1, 3)
    figure = plt.figure(figsize=(6 * columns, 4.4 * rows_))
    grid = figure.add_gridspec(rows_, columns)
    loss_axis = figure.add_subplot(grid[0, 0])
    accuracy_axis = figure.add_subplot(grid[0, 1])
    schedule = (grid[1, 0] if with_sigma else grid[0, 2]).subgridspec(2, 1, hspace=0.08)
    eps_axis = figure.add_subplot(schedule[0])
    lr_axis = figure.add_subplot(schedule[1], sharex=eps_axis)
    _loss_panel(loss_axis, steps, spans, loss_names or {})
    _accuracy_panel(accuracy_axis, epochs)
    _eps_panel(eps_axis, steps)
    _lr_panel(lr_axis, steps)
    axes = [loss_axis, accuracy_axis, eps_axis, lr_axis]
    low, high = min(axis.get_xlim()[0] for axis in axes), max(axis.get_xlim()[1] for axis in axes)
    for axis in axes:  # one step axis: the evaluations line up with the loss and the schedule
        axis.set_xlim(low, high)
    if with_sigma:
        sigma_axis = figure.add_subplot(grid[1, 1])
        _sigma_panel(sigma_axis, steps)  # its own steps: a short main stage after a long warm-up stays readable
        axes.append(sigma_axis)
    for axis in axes:
        _plain(axis)
        _mark_stages(axis, spans)
    _compact(lr_axis)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def render_curves(rows: list[dict[str, Any]], config: Any = None) -> bytes:
    """The curves of ``rows`` as PNG bytes; ``config`` (a TrainConfig) names the run and each stage's loss."""
    import matplotlib.pyplot as plt

    figure = build_curves_figure(rows, config)
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def loss_names_of(config: Any) -> dict[str, str]:
    """What each stage's loss is, from a TrainConfig (e.g. ``main: robust loss (deeppoly)``)."""
    def name(estimator: str, relaxation: str | None) -> str:
        if estimator == "pgd":
            return "adversarial loss (PGD)"
        return f"robust loss ({relaxation})" if relaxation else "standard loss"

    names = {"main": name(config.estimator, config.relaxation)}
    if config.warmup is not None:
        names["warmup"] = name(config.warmup.estimator, None)
    return names


def curves_title(config: Any) -> str:
    """``name: estimator, relaxation, eps``: which run the figure shows."""
    relaxation = f" {config.relaxation}" if config.relaxation else ""
    return f"{config.name or config.model.arch}: {config.estimator}{relaxation}, eps {config.eps:g}"


def plot_curves(rows: list[dict[str, Any]], path: Path, config: Any = None) -> Path:
    """Write the curves of ``rows`` to ``path`` (atomically: a reader never sees half a PNG)."""
    data = render_curves(rows, config)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
