"""`gls evaluate`: natural, PGD-adversarial and certified accuracy of a trained model on its test set."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from .console import Reporter, fail, out, result_table


def evaluate_command(run: Annotated[Path, typer.Argument(help="run directory or model.safetensors")],
                     eps: Annotated[float, typer.Option(help="L_inf radius")],
                     method: Annotated[str, typer.Option(help="relaxation that certifies, or complete")] = "deeppoly",
                     as_json: Annotated[bool, typer.Option("--json", help="print JSON only")] = False,
                     limit: Annotated[int | None, typer.Option(help="first N test images")] = None,
                     data_dir: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
                     batch_size: Annotated[int, typer.Option(help="inputs per batch")] = 250,
                     pgd_steps: Annotated[int, typer.Option()] = 20,
                     pgd_restarts: Annotated[int, typer.Option()] = 2,
                     alpha_steps: Annotated[int, typer.Option(help="alpha-CROWN slope steps")] = 20,
                     timeout: Annotated[float, typer.Option(help="method complete: seconds per input")] = 30.0
                     ) -> None:
    """Natural, adversarial (PGD) and certified accuracy of a trained model on the test set."""
    from gls_core.data import load_dataset
    from gls_core.evaluation import CERTIFY_METHODS, evaluate
    from gls_core.training import load_model

    if method not in CERTIFY_METHODS:
        raise fail(f"unknown method {method!r}; expected one of {list(CERTIFY_METHODS)}")
    if not timeout > 0:
        raise fail(f"--timeout must be > 0 seconds, got {timeout}")
    if eps < 0:
        raise fail(f"eps must be >= 0, got {eps}")
    try:
        spec, theta, metadata = load_model(run)
        test = load_dataset(metadata["dataset"], "test", data_dir, subset=limit)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    run_evaluation = partial(evaluate, spec, theta, test.x, test.y, eps, method=method, batch_size=batch_size,
                             pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, alpha_steps=alpha_steps,
                             complete_timeout=timeout)
    if as_json:
        typer.echo(json.dumps(run_evaluation().to_dict()))
        return
    with Reporter(f"{method} eps={eps:g}", len(test), unit="input") as bar:
        result = run_evaluation(progress=bar.update)
    out.print(result_table(result.to_dict(), f"{spec.name} on {len(test)} test images"))
