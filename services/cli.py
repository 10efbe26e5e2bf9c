"""The `gls` command line: in-process training and evaluation (services add their verbs here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .client_cli import register as register_client_verbs

app = typer.Typer(help="GLS: certified training with Gaussian Loss Smoothing.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True, soft_wrap=True)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def _fail(message: str) -> typer.Exit:
    console.print("error:", message, style="red", markup=False, highlight=False)
    return typer.Exit(2)


@app.command()
def train(config: Annotated[Path, typer.Argument(help="training config (YAML)")],
          out: Annotated[Path, typer.Option("--out", help="run directory")],
          overrides: Annotated[list[str] | None, typer.Option("--set", help="override a field: key.path=value")] = None,
          resume: Annotated[bool, typer.Option(help="continue the run in --out from its checkpoint")] = False,
          force: Annotated[bool, typer.Option(help="overwrite an existing run in --out")] = False) -> None:
    """Train in this process; writes model.safetensors, config.yaml, metrics.jsonl and curves.png to --out."""
    import torch

    from gls_core.training import ConfigError, Trainer, load_config, read_metrics
    from gls_core.training.checkpoint import MODEL_FILE, read_config
    from gls_core.training.plots import PLOT_FILE, plot_curves

    try:
        settings = load_config(config, overrides or [])
        if resume and read_config(out) != settings:
            raise _fail(f"{config} (with --set) differs from {out / 'config.yaml'}; resume with the run's own config")
    except (ConfigError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    if (out / MODEL_FILE).exists() and not (resume or force):
        raise _fail(f"{out} already holds a run; pass --resume to continue it or --force to overwrite it")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        trainer = Trainer(settings, out)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error)) from None
    with _progress() as bar:
        task = bar.add_task(settings.name or config.stem, total=trainer.total_steps, status="")

        def show(step: int, total: int, row: dict) -> None:
            status = f"{row['stage']} loss {row['loss']:.4f} eps {row['eps']:.4f}"
            bar.update(task, completed=step, status=status)

        trainer.progress = show
        result = trainer.run(resume=resume)
    plot_curves(read_metrics(out), out / PLOT_FILE)
    if result.final is not None:
        _print_result(result.final.to_dict(), f"final evaluation ({out})")
    console.print(f"wrote {out / MODEL_FILE}, {out / 'metrics.jsonl'}, {out / PLOT_FILE}")


def _print_result(result: dict, title: str) -> None:
    table = Table(title=title)
    for key in ("n", "eps", "method", "natural_acc", "adversarial_acc", "certified_acc"):
        table.add_column(key)
    table.add_row(*(f"{100 * result[k]:.2f}%" if k.endswith("_acc") else str(result[k])
                    for k in ("n", "eps", "method", "natural_acc", "adversarial_acc", "certified_acc")))
    Console().print(table)


@app.command("evaluate")
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
        raise _fail(f"unknown method {method!r}; expected one of {list(CERTIFY_METHODS)}")
    if not timeout > 0:
        raise _fail(f"--timeout must be > 0 seconds, got {timeout}")
    if eps < 0:
        raise _fail(f"eps must be >= 0, got {eps}")
    try:
        spec, theta, metadata = load_model(run)
        test = load_dataset(metadata["dataset"], "test", data_dir, subset=limit)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error)) from None
    result = evaluate(spec, theta, test.x, test.y, eps, method=method, batch_size=batch_size, pgd_steps=pgd_steps,
                      pgd_restarts=pgd_restarts, alpha_steps=alpha_steps, progress=not as_json,
                      complete_timeout=timeout)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _print_result(result.to_dict(), f"{spec.name} on {len(test)} test images")


def _register_operator_verbs() -> None:
    from . import ops_cli
    from .verify_cli import verify_command

    app.command("verify")(verify_command)
    app.command("worker")(ops_cli.worker)
    app.command("coordinator")(ops_cli.coordinator)
    app.command("gateway")(ops_cli.gateway)
    app.add_typer(ops_cli.cluster_app, name="cluster")


_register_operator_verbs()
register_client_verbs(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
