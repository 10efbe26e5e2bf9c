"""`gls verify`: complete verification of a trained model on test images, with a progress bar and a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    console.print("error:", message, style="red", markup=False, highlight=False)
    return typer.Exit(2)


def verify_command(
        model: Annotated[Path, typer.Argument(help="run directory or model.safetensors")],
        eps: Annotated[float, typer.Option(help="L_inf radius")],
        limit: Annotated[int | None, typer.Option(help="first N test images")] = None,
        timeout: Annotated[float, typer.Option(help="seconds per input, attack included")] = 30.0,
        method: Annotated[str, typer.Option(help="bounds of each subdomain: alpha-crown or deeppoly")] = "alpha-crown",
        branching: Annotated[str, typer.Option(help="which ReLU to split: widest or widest-early")] = "widest",
        json_file: Annotated[Path | None, typer.Option("--json", help="write per-input verdicts and a summary")] = None,
        data_dir: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
        threads: Annotated[int, typer.Option(help="torch threads (0: torch's default)")] = 0) -> None:
    """Decide each test image: verified, falsified (with a checked counterexample) or unknown (time ran out)."""
    import torch

    from gls_core.data import load_dataset
    from gls_core.training import load_model
    from gls_core.verify import VerifyOptions, robustness, summarize, verify_property

    if threads:
        torch.set_num_threads(threads)
    try:
        options = VerifyOptions(timeout=timeout, method=method, branching=branching)
        if not 0 <= eps <= 1:
            raise ValueError(f"eps must lie in [0, 1] (inputs are in [0, 1]), got {eps}")
        spec, theta, metadata = load_model(model)
        test = load_dataset(metadata["dataset"], "test", data_dir, subset=limit)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error)) from None
    theta = theta.double()
    x, y = test.x.double(), test.y
    verdicts = []
    rows = []
    with Progress(TextColumn("[bold]verify"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("verify", total=x.shape[0], status="")
        for index in range(x.shape[0]):
            verdict = verify_property(spec, theta, robustness(spec, x[index], int(y[index]), eps), options,
                                      torch.Generator().manual_seed(index))
            verdicts.append(verdict)
            rows.append({"index": index, "label": int(y[index]), **verdict.to_dict()})
            counts = summarize(verdicts)
            bar.update(task, advance=1, status=f"verified {counts['verified']} falsified {counts['falsified']} "
                                               f"unknown {counts['unknown']}")
    summary = {**summarize(verdicts), "eps": eps, "timeout": timeout, "method": method, "model": str(model)}
    if json_file is not None:
        json_file.write_text(json.dumps({"summary": summary, "verdicts": rows}))
    table = Table(title=f"{spec.name}, eps {eps:g}, {summary['n']} test images, {timeout:g} s each")
    for key in ("n", "verified", "falsified", "unknown", "seconds_median", "seconds_p95", "subdomains_per_second"):
        table.add_column(key.replace("_", " "))
    table.add_row(*(str(summary[key]) for key in ("n", "verified", "falsified", "unknown", "seconds_median",
                                                   "seconds_p95", "subdomains_per_second")))
    Console().print(table)
