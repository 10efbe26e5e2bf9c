"""The training-curves figure: markers per evaluation, legends, the stage boundary and sigma's scale."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gls_core.training.plots import build_curves_figure, render_curves, stage_boundary_label


def _rows(sigma: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"kind": "epoch", "stage": "init", "epoch": 0, "step": 0, "natural_acc": 0.9,
                                   "adversarial_acc": 0.7, "certified_acc": 0.6, "n": 100, "method": "ibp",
                                   "eps": 0.1}]
    for step in range(1, 41):
        stage = "warmup" if step <= 10 else "main"
        row: dict[str, Any] = {"kind": "step", "stage": stage, "epoch": 1 + step // 20, "step": step,
                               "loss": 1.0 / step, "lr": 3e-4 * (0.5 if step > 30 else 1.0),
                               "eps": min(0.1, 0.01 * step)}
        if sigma:
            row["sigma"] = 1e-3 * (1 - 1e-4 * step)
        rows.append(row)
    rows.append({"kind": "epoch", "stage": "main", "epoch": 2, "step": 40, "natural_acc": 0.88,
                 "adversarial_acc": 0.72, "certified_acc": 0.65, "n": 100, "method": "ibp", "eps": 0.1})
    return rows


@pytest.fixture
def figure() -> Iterator[Figure]:
    made = build_curves_figure(_rows())
    yield made
    plt.close(made)


def _values(line: Line2D) -> list[float]:
    return [float(value) for value in np.asarray(line.get_ydata())]


def _legend(axis: Axes) -> list[str]:
    legend = axis.get_legend()
    assert legend is not None, axis.get_title()
    return [text.get_text() for text in legend.get_texts()]


def _axis(figure: Figure, label: str) -> Axes:
    return next(axis for axis in figure.axes if axis.get_ylabel() == label)


def test_accuracy_lines_mark_each_evaluation(figure: Figure) -> None:
    lines = [line for line in _axis(figure, "%").get_lines() if not str(line.get_label()).startswith("_")]
    assert len(lines) == 3
    for line in lines:
        assert line.get_marker() not in (None, "None", "", " ")
        assert len(_values(line)) == 2


def test_eps_and_lr_have_legends_and_their_own_axes(figure: Figure) -> None:
    eps_axis, lr_axis = _axis(figure, "eps"), _axis(figure, "lr")
    assert eps_axis is not lr_axis and eps_axis.get_position().y0 > lr_axis.get_position().y0
    assert _legend(eps_axis) == ["eps (training)"]
    assert _legend(lr_axis) == ["learning rate"]
    assert [line.get_color() for line in eps_axis.get_lines()][0] != lr_axis.get_lines()[0].get_color()


def test_stage_boundary_is_labelled_on_every_panel(figure: Figure) -> None:
    label = stage_boundary_label("warmup", "main")
    assert label == "warm-up \N{RIGHTWARDS ARROW} main"
    for axis in figure.axes:
        assert any(text.get_text().strip() == label for text in axis.texts), axis.get_title()


def test_sigma_is_relative_to_its_start(figure: Figure) -> None:
    axis = _axis(figure, "sigma / start")
    values = _values(axis.get_lines()[0])
    assert math.isclose(values[0], 1.0) and 0.99 < values[-1] < 1.0
    figure.canvas.draw()
    labels = [tick.get_text() for tick in axis.get_yticklabels() if tick.get_text()]
    assert labels and all(len(label) <= 6 for label in labels), labels


def test_without_sigma_there_is_no_sigma_panel_and_png_renders() -> None:
    made = build_curves_figure(_rows(sigma=False))
    try:
        assert all(axis.get_ylabel() != "sigma / start" for axis in made.axes)
        assert len(made.axes) == 4
    finally:
        plt.close(made)
    assert render_curves(_rows()).startswith(b"\x89PNG")


def test_accuracy_legend_lies_outside_the_axes(figure: Figure) -> None:
    axis = _axis(figure, "%")
    legend = axis.get_legend()
    assert legend is not None
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    box, frame = legend.get_window_extent(renderer), axis.get_window_extent(renderer)
    assert box.y1 < frame.y0


def test_step_ticks_are_whole_and_the_panels_share_their_steps() -> None:
    rows = [row for row in _rows() if row.get("stage") != "warmup" or row["kind"] == "epoch"]
    for row in _rows():
        if row.get("kind") == "step" and row["stage"] == "warmup":
            rows.append({key: value for key, value in row.items() if key != "sigma"})  # a warm-up has no sigma
    made = build_curves_figure(sorted(rows, key=lambda row: (row["step"], row["kind"] != "epoch")))
    try:
        made.canvas.draw()
        loss_axis, sigma_axis = _axis(made, "loss"), _axis(made, "sigma / start")
        assert all(_axis(made, label).get_xlim() == loss_axis.get_xlim() for label in ("%", "eps", "lr"))
        assert sigma_axis.get_xlim()[0] > 5  # sigma exists in the main stage only and is drawn over its steps
        labels = [tick.get_text() for tick in sigma_axis.get_xticklabels() if tick.get_text()]
        assert len(labels) == len(set(labels)), labels
        assert all(float(tick) == int(tick) for tick in sigma_axis.get_xticks())
    finally:
        plt.close(made)
