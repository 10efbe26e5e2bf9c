"""`gls evaluate`: natural, PGD-adversarial and certified accuracy of a trained model on its test set.

Its defaults are the library's (``gls_core.evaluation.DEFAULT_*``), so the command line, ``evaluate()``
and the docs cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from gls_core.catalog import (
    COMPLETE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMPLETE_TIMEOUT,
    DEFAULT_PGD_RESTARTS,
    DEFAULT_PGD_STEPS,
    certify_methods,
)

from .console import Reporter, fail, out, result_table


def choice(choices: Sequence[str], what: str = "method") -> Callable[[str], str]:
    """A typer ``parser`` that accepts one of ``choices`` and names them all when refusing a value."""

    def parse(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"unknown {what} {value!r}; expected one of {list(choices)}")
        return value

    return parse


METHOD_HELP = f"relaxation that certifies, or complete (branch and bound): {', '.join(certify_methods())}"
MethodOption = Annotated[str, typer.Option(parser=choice(certify_methods()), metavar="<method>", help=METHOD_HELP)]


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs, each value read as a YAML scalar (``20``, ``0.1``, ``deeppoly``)."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise fail(f"--option expects NAME=VALUE, got {item!r}")
        options[name.strip()] = yaml.safe_load(value)
    return options


def evaluate_command(run: Annotated[Path, typer.Argument(help="run directory or model.safetensors")],
                     eps: Annotated[float, typer.Option(min=0.0, max=1.0, help="L_inf radius in [0, 1] pixel space")],
                     method: MethodOption = "deeppoly",
                     as_json: Annotated[bool, typer.Option("--json", help="print JSON only (progress goes to "
                                                                          "stderr)")] = False,
                     limit: Annotated[int | None, typer.Option(min=1, help="only the first N test images "
                                                                     "(default: all, which takes minutes)")] = None,
                     data_dir: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
                     batch_size: Annotated[int, typer.Option(min=1, help="inputs per batch")] = DEFAULT_BATCH_SIZE,
                     pgd_steps: Annotated[int, typer.Option(min=1, help="PGD steps per restart (adversarial "
                                                            "accuracy)")] = DEFAULT_PGD_STEPS,
                     pgd_restarts: Annotated[int, typer.Option(min=1, help="PGD random restarts per input")
                                             ] = DEFAULT_PGD_RESTARTS,
                     alpha_steps: Annotated[int | None, typer.Option(min=0, help="slope steps of a relaxation "
                                                                    "with steps (default: its evaluation setting)")
                                            ] = None,
                     option: Annotated[list[str] | None, typer.Option(
                         help="an option of the relaxation, NAME=VALUE (repeatable; default: its evaluation "
                              "setting)")] = None,
                     timeout: Annotated[float, typer.Option(help="method complete: seconds per input")
                                        ] = DEFAULT_COMPLETE_TIMEOUT
                     ) -> None:
    """Natural, adversarial (PGD) and certified accuracy of a trained model on the test set."""
    if not timeout > 0:
        raise fail(f"--timeout must be > 0 seconds, got {timeout}")
    from gls_core.data import load_dataset
    from gls_core.errors import InvalidInput
    from gls_core.evaluation import bound_options, evaluate
    from gls_core.training import load_model

    options = parse_options(option or [])
    if method == COMPLETE and options:
        raise fail(f"--option: the complete method takes none (got {sorted(options)})")
    try:
        options = {} if method == COMPLETE else bound_options(method, alpha_steps, options, "--option")
    except InvalidInput as error:
        raise fail(str(error)) from None

    try:
        spec, theta, metadata = load_model(run)
        test = load_dataset(metadata["dataset"], "test", data_dir, subset=limit)
        test.check_fits(spec.name, spec.input_shape, spec.num_outputs)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    with Reporter(f"{method} eps={eps:g}", len(test), unit="input") as bar:  # on stderr, with --json too
        result = evaluate(spec, theta, test.x, test.y, eps, method=method, batch_size=batch_size,
                          pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, options=options,
                          complete_timeout=timeout, progress=bar.update)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    out.print(result_table(result.to_dict(), f"{spec.name} on {len(test)} test images"))
