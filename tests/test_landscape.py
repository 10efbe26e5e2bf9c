"""Loss landscapes: the grid is one population evaluation that equals evaluating each point on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from gls_core import network
from gls_core.data import load_dataset
from gls_core.landscape import Landscape, directions, grid_points, loss_landscape, population_loss
from gls_core.landscape_plot import landscape_figure
from gls_core.nets import kaiming_uniform
from gls_core.training import save_model

EPS = 0.03


@pytest.fixture(scope="module")
def setup() -> tuple:
    spec = network("fc-16", "digits")
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(0))
    test = load_dataset("digits", "test", subset=24)
    return spec, theta, test.x, test.y


def test_directions_are_orthonormal_and_the_gradient_one_ascends(setup: tuple) -> None:
    spec, theta, x, y = setup
    basis = directions(spec, theta, x, y, EPS, "gradient", 2, torch.Generator().manual_seed(1))
    assert torch.allclose(basis @ basis.T, torch.eye(2, dtype=basis.dtype), atol=1e-5)
    step = 1e-3
    around = population_loss(spec, torch.stack([theta - step * basis[0], theta, theta + step * basis[0]]), x, y, EPS,
                             "deeppoly")
    assert around[0] < around[1] < around[2], around


def test_the_population_evaluation_equals_each_point_alone(setup: tuple) -> None:
    spec, theta, x, y = setup
    land = loss_landscape(spec, theta, x, y, EPS, ["ibp", "deeppoly"], radius=0.2, points=5, sigmas=[1e-2],
                          samples=4, seed=3)
    basis = directions(spec, theta, x, y, EPS, "gradient", 1, torch.Generator().manual_seed(3))
    grid = grid_points(theta, basis, land.offsets)
    noise = torch.randn(4, theta.numel(), generator=torch.Generator().manual_seed(3))  # after the (no) random axes
    for method in ("ibp", "deeppoly"):
        alone = torch.stack([population_loss(spec, point, x, y, EPS, method) for point in grid])
        assert torch.allclose(land.raw[method], alone, rtol=1e-5, atol=1e-6), method
        assert float(land.raw[method][2]) == pytest.approx(float(population_loss(spec, theta, x, y, EPS, method)),
                                                           rel=1e-5)
        mean, error = land.smoothed[(method, 1e-2)]
        perturbed = torch.stack([population_loss(spec, grid[2] + 1e-2 * z, x, y, EPS, method) for z in noise])
        assert float(mean[2]) == pytest.approx(float(perturbed.mean()), rel=1e-5)
        assert float(error[2]) == pytest.approx(float(perturbed.std() / 2), rel=1e-4)


def test_a_plane_has_the_grid_shape_and_bad_arguments_are_named(setup: tuple) -> None:
    spec, theta, x, y = setup
    land = loss_landscape(spec, theta, x, y, EPS, ["ibp"], radius=0.1, points=3, dimensions=2, direction="random")
    assert land.raw["ibp"].shape == (3, 3) and not land.smoothed
    with pytest.raises(ValueError, match="radius"):
        loss_landscape(spec, theta, x, y, EPS, ["ibp"], radius=0.0)
    with pytest.raises(ValueError, match="direction"):
        loss_landscape(spec, theta, x, y, EPS, ["ibp"], radius=0.1, direction="sideways")


def test_the_cli_draws_the_figure(setup: tuple, tmp_path: Path) -> None:
    spec, theta, _, _ = setup
    save_model(tmp_path / "model.safetensors", theta, "fc-16", "digits")
    command = ["landscape", str(tmp_path / "model.safetensors"), "--eps",
               str(EPS), "--out", str(tmp_path / "land.png"), "--points", "5", "--samples", "2", "--limit", "8",
               "--sigmas", "1e-3"]
    done = run_cli(*command)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "land.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_cli(*command[:-2], "--methods", "zonotope")
    assert bad.returncode == 2 and "zonotope" in bad.stderr


def _fake_landscape(sigmas: list[float]) -> Landscape:
    offsets = torch.linspace(-1, 1, 5)
    raw = {method: 1 + offsets.abs() * scale for method, scale in (("ibp", 2.0), ("crown-ibp", 1.0), ("deeppoly", 1.0))}
    smoothed = {(method, sigma): (values, torch.full_like(values, 0.01)) for method, values in raw.items()
                for sigma in sigmas}
    return Landscape(offsets, 1, raw, smoothed, 4, "gradient")


@pytest.mark.parametrize("sigmas", [[], [1e-3], [1e-3, 1e-2], [1e-3, 1e-2, 1e-1]])
def test_figure_titles_name_run_and_method_and_no_panel_is_empty(sigmas: list[float]) -> None:
    import matplotlib.pyplot as plt

    figure = landscape_figure(_fake_landscape(sigmas), "ibp-grad: robust loss")
    try:
        assert len(figure.axes) == 1 + len(sigmas)
        titles = [axis.get_title() for axis in figure.axes]
        assert len(set(titles)) == len(titles)
        for axis in figure.axes:
            assert axis.get_visible() and axis.get_lines()
            assert axis.get_title().startswith("ibp-grad: ibp, crown-ibp, deeppoly"), axis.get_title()
            styles = {line.get_label(): line for line in axis.get_lines()}
            crown, deeppoly = styles["crown-ibp"], styles["deeppoly"]
            assert crown.get_linestyle() != deeppoly.get_linestyle()
            assert crown.get_zorder() > deeppoly.get_zorder() and crown.get_linewidth() < deeppoly.get_linewidth()
    finally:
        plt.close(figure)


def test_an_explicit_run_name_wins_over_the_title() -> None:
    import matplotlib.pyplot as plt

    figure = landscape_figure(_fake_landscape([1e-3]), "some title", run="deeppoly-pgpe")
    try:
        assert all(axis.get_title().startswith("deeppoly-pgpe: ") for axis in figure.axes)
    finally:
        plt.close(figure)
