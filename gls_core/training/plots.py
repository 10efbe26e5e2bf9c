"""Training curves as PNG, read back from metrics rows (a run's metrics.jsonl or a cluster job's metrics).

Panels: the training loss per stage (a PGD warm-up's adversarial loss is not the robust loss of
the main stage, so each stage is its own line, with the boundary marked), test accuracies labelled
with the relaxation, eps and number of test inputs they were measured with, eps and lr over
training, and sigma only for the estimators that have one (PGPE, RGS).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PLOT_FILE = "curves.png"
STAGE_LABELS = {"warmup": "warm-up", "main": "main"}


def _plain(axis: Axes) -> None:
    """Tick labels as plain numbers: no offset such as ``1e-7+1e-3``, no exponent above the axis.

    The y labels keep as many digits as the tick spacing needs (sigma moves in its fifth digit).
    """
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    values = ScalarFormatter(useOffset=False)
    values.set_scientific(False)
    axis.yaxis.set_major_formatter(values)
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


def _mark_stages(axis: Axes, spans: list[tuple[str, int, int]]) -> None:
    for _, first, _ in spans[1:]:
        axis.axvline(first - 0.5, color="grey", linestyle="--", linewidth=0.8)


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
    axis.legend(fontsize=8)


def _accuracy_panel(axis: Axes, epochs: list[dict[str, Any]]) -> None:
    if not epochs:
        axis.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=axis.transAxes)
    last = epochs[-1] if epochs else {}
    certified = (f"certified ({last.get('method', '?')}, eps {last.get('eps', '?')}, "
                 f"{last.get('n', '?')} test inputs)")
    for key, label in (("natural_acc", "natural"), ("adversarial_acc", "PGD-adversarial"),
                       ("certified_acc", certified)):
        axis.plot([r["step"] for r in epochs], [100 * r[key] for r in epochs], marker="o", markersize=3, label=label)
    axis.set(title="test accuracy", xlabel="step", ylabel="%")
    axis.legend(fontsize=8)


def _schedule_panel(axis: Axes, steps: list[dict[str, Any]]) -> None:
    xs = [r["step"] for r in steps]
    axis.plot(xs, [r["eps"] for r in steps], color="tab:blue", label="eps")
    axis.set(title="eps and learning rate", xlabel="step")
    axis.set_ylabel("eps", color="tab:blue")
    lr_axis = axis.twinx()
    lr_axis.plot(xs, [r["lr"] for r in steps], color="tab:red", label="lr")
    lr_axis.set_ylabel("lr", color="tab:red")
    _plain(lr_axis)


def _sigma_panel(axis: Axes, steps: list[dict[str, Any]]) -> None:
    rows = [r for r in steps if "sigma" in r]
    axis.plot([r["step"] for r in rows], [r["sigma"] for r in rows])
    axis.set(title="sigma (mean over weights)", xlabel="step", ylabel="sigma")


def render_curves(rows: list[dict[str, Any]], config: Any = None) -> bytes:
    """The curves of ``rows`` as PNG bytes; ``config`` (a TrainConfig) names the run and each stage's loss."""
    title = curves_title(config) if config is not None else None
    loss_names = loss_names_of(config) if config is not None else None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row for row in rows if row.get("kind") == "step"]
    epochs = [row for row in rows if row.get("kind") == "epoch"]
    spans = _stage_spans(steps)
    panels = 4 if any("sigma" in row for row in steps) else 3
    rows_, columns = (2, 2) if panels == 4 else (1, 3)
    figure, grid = plt.subplots(rows_, columns, figsize=(6 * columns, 4.2 * rows_), squeeze=False)
    axes = list(grid.flat)
    _loss_panel(axes[0], steps, spans, loss_names or {})
    _accuracy_panel(axes[1], epochs)
    _schedule_panel(axes[2], steps)
    if panels == 4:
        _sigma_panel(axes[3], steps)
    for axis in axes:
        _plain(axis)
        _mark_stages(axis, spans)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
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
