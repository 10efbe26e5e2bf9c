"""`gls plot RUN|JOB`: draw training curves from a run directory, or from a cluster job when the services are installed.

The core does not talk to the gateway; the services register a source of job curves here
(:data:`JOB_CURVES`), so `gls plot JOB` works wherever `gls submit` does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from .console import fail, out, output_file

# job id -> PNG bytes; filled by the services plugin (it reads GLS_URL/GLS_TOKEN or GLS_CLUSTER).
JOB_CURVES: list[Callable[[str], bytes]] = []


def plot_command(target: Annotated[str, typer.Argument(help="run directory (or its metrics.jsonl), or a job id")],
                 out_file: Annotated[Path | None, typer.Option("--out", help="PNG to write [default: RUN/curves.png, "
                                                                              "or JOB.png for a job]")] = None
                 ) -> None:
    """Draw training curves (loss per stage, accuracies, eps and lr, sigma) as a PNG."""
    from gls_core.training import read_metrics
    from gls_core.training.checkpoint import CONFIG_FILE, METRICS_FILE, read_config
    from gls_core.training.plots import PLOT_FILE, plot_curves

    path = Path(target)
    run_dir = path.parent if path.name == METRICS_FILE else path
    if (run_dir / METRICS_FILE).is_file():
        config = read_config(run_dir) if (run_dir / CONFIG_FILE).is_file() else None
        try:
            rows = read_metrics(run_dir)
        except ValueError as error:
            raise fail(str(error)) from None
        written = plot_curves(rows, output_file(out_file) if out_file else run_dir / PLOT_FILE, config)
    elif path.exists():
        raise fail(f"{path} holds no {METRICS_FILE}: not a run directory")
    elif JOB_CURVES:
        written = output_file(out_file or Path(f"{target}.png"))
        written.write_bytes(JOB_CURVES[0](target))
    else:
        raise fail(f"{target} is neither a run directory nor, without gls[services] installed, a job id")
    out.print(f"wrote {written.resolve()}", markup=False, highlight=False)
