"""`gls landscape RUN --out FILE.png`: the robust loss around a trained model, raw and Gaussian-smoothed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .console import Reporter, fail, out, output_file

LANDSCAPE_METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly")


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise fail(f"{name}: expected comma-separated numbers, got {text!r}") from None


def landscape_command(
        run: Annotated[Path, typer.Argument(help="run directory or model.safetensors")],
        out_file: Annotated[Path, typer.Option("--out", help="PNG to write")],
        eps: Annotated[float | None, typer.Option(help="L_inf radius [default: the run's eps]")] = None,
        methods: Annotated[str, typer.Option(help=f"relaxations, comma-separated, of {', '.join(LANDSCAPE_METHODS)}")]
        = "ibp,crown-ibp,deeppoly",
        sigmas: Annotated[str, typer.Option(help="smoothing standard deviations, comma-separated (empty: raw only)")]
        = "1e-6,5e-5,5e-4",
        samples: Annotated[int, typer.Option(min=2, help="perturbations per point for the smoothed loss")] = 32,
        points: Annotated[int, typer.Option(min=3, help="points per axis")] = 41,
        radius: Annotated[float, typer.Option(help="largest offset along each direction (L2 norm in weight space)")]
        = 0.05,
        dimensions: Annotated[int, typer.Option(min=1, max=2, help="1: a line, 2: a plane (contours)")] = 1,
        direction: Annotated[str, typer.Option(help="gradient (of the DeepPoly loss, the paper's choice; a "
                                                    "random second axis in 2-D) or random")] = "gradient",
        limit: Annotated[int, typer.Option(min=1, help="first N test images the loss averages over")] = 128,
        data_dir: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
        seed: Annotated[int, typer.Option(help="seed of the random directions and perturbations")] = 0) -> None:
    """Draw the robust loss along one or two directions around a trained model, raw and smoothed (Figure 4)."""
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in LANDSCAPE_METHODS]
    if unknown or not chosen:
        raise fail(f"--methods: {unknown or 'none given'}; choose from {list(LANDSCAPE_METHODS)}")
    smoothing = _floats(sigmas, "--sigmas")
    from gls_core.data import load_dataset
    from gls_core.landscape import DIRECTIONS, loss_landscape, population_size
    from gls_core.landscape_plot import plot_landscape
    from gls_core.training import load_model
    from gls_core.training.checkpoint import CONFIG_FILE, read_config

    if direction not in DIRECTIONS:
        raise fail(f"--direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    output_file(out_file)
    try:
        spec, theta, metadata = load_model(run)
        if eps is None:
            if not (run.is_dir() and (run / CONFIG_FILE).is_file()):
                raise ValueError("give --eps: the model file carries no training config")
            eps = read_config(run).eps
        test = load_dataset(metadata["dataset"], "test", data_dir, subset=limit)
        test.check_fits(spec.name, spec.input_shape, spec.num_outputs)
        size = population_size(points, dimensions, smoothing, samples)
        # one stage per relaxation: their costs differ by orders of magnitude (IBP against DeepPoly)
        with Reporter("landscape", size * len(chosen), unit="member",
                      stages=[(method, size) for method in chosen]) as bar:
            landscape = loss_landscape(spec, theta, test.x, test.y, eps, chosen, radius=radius, points=points,
                                       dimensions=dimensions, direction=direction, sigmas=smoothing,
                                       samples=samples, seed=seed, progress=bar.update)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    name = (run if run.is_dir() else run.parent).resolve().name
    plot_landscape(landscape, out_file, f"{name} ({spec.name}): robust loss around the trained weights, eps {eps:g}, "
                                        f"{len(test)} test inputs", run=name)
    out.print(f"wrote {out_file}")
