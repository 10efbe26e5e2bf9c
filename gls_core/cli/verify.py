"""`gls verify`: complete verification of a trained model on test images, with a progress bar and a table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gls_core.relaxations import ALPHA_CROWN, DEEPPOLY

from .console import Reporter, console, fail, out


def _load(model: Path):  # type: ignore[no-untyped-def]
    """(spec, theta, dataset or None) of a run directory, a model.safetensors or an ONNX file."""
    if model.suffix == ".onnx":
        from gls_core.nets.onnx_io import from_onnx

        spec, theta = from_onnx(model)
        return spec, theta, None
    from gls_core.training import load_model

    spec, theta, metadata = load_model(model)
    return spec, theta, metadata["dataset"]


def _with_settings(options: Any, settings: list[str]) -> Any:
    """``options`` with each ``field=value`` of ``--set`` applied (the value read as the field's type)."""
    fields = {f.name: f for f in dataclasses.fields(options)}
    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in fields or not value:
            raise ValueError(f"--set {setting}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        kind = type(getattr(options, name))
        try:
            options = dataclasses.replace(options, **{name: kind(value)})
        except (TypeError, ValueError) as error:
            raise ValueError(f"--set {setting}: {error}") from None
    return options


def verify_command(
        model: Annotated[Path, typer.Argument(help="run directory, model.safetensors or model.onnx")],
        prop: Annotated[Path | None, typer.Argument(metavar="[PROPERTY.vnnlib]",
                                                    help="a VNN-LIB property (instead of test images)")] = None,
        eps: Annotated[float | None, typer.Option(help="L_inf radius around each test image")] = None,
        limit: Annotated[int | None, typer.Option(help="first N test images")] = None,
        timeout: Annotated[float, typer.Option(
            help="seconds per input: attacks, bounds, branch and bound and MILP all stop at it")] = 30.0,
        method: Annotated[str, typer.Option(help=f"bounds of each subdomain: {ALPHA_CROWN} or {DEEPPOLY}")
                          ] = ALPHA_CROWN,
        branching: Annotated[str | None, typer.Option(
            help="ReLU to split: widest, widest-early, babsr (the default), fsb")] = None,
        json_file: Annotated[Path | None, typer.Option("--json", help="write per-input verdicts and a summary")] = None,
        result: Annotated[Path | None, typer.Option(help="with a property: write the VNN-COMP result file")] = None,
        dataset: Annotated[str | None, typer.Option(help="test images of an ONNX model (e.g. mnist)")] = None,
        data_dir: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
        threads: Annotated[int, typer.Option(help="torch threads (0: torch's default)")] = 0,
        option: Annotated[list[str] | None, typer.Option(
            "--set", help="a VerifyOptions field, e.g. --set attack_restarts=64 (repeatable)")] = None) -> None:
    """Decide each test image (or one VNN-LIB property): verified, falsified with a checked counterexample, or unknown.

    With a property, prints the VNN-COMP answer (sat, unsat, timeout or unknown) and writes the
    result file (``sat`` with the counterexample) to --result.
    """
    if prop is not None and (eps is not None or limit is not None):  # argument errors before torch is imported
        raise fail("--eps and --limit are for test images; a property carries its own input box")
    if prop is None and eps is None:
        raise fail("give --eps (a radius around each test image) or a VNN-LIB property")
    if eps is not None and not 0 <= eps <= 1:
        raise fail(f"eps must lie in [0, 1] (inputs are in [0, 1]), got {eps}")
    import torch

    from gls_core.data import load_dataset
    from gls_core.verify import VerifyOptions, summarize, verify_cases, verify_each
    from gls_core.verify.vnnlib import read_vnnlib_cases, result_text

    if threads:
        torch.set_num_threads(threads)
    try:
        options = VerifyOptions(timeout=timeout, method=method)
        if branching is not None:
            options = dataclasses.replace(options, branching=branching)
        options = _with_settings(options, option or [])
        spec, theta, model_dataset = _load(model)
        theta = theta.double()
        if prop is not None:
            cases = read_vnnlib_cases(prop, spec.input_shape, spec.num_outputs)
        else:
            name = dataset or model_dataset
            if name is None:
                raise ValueError("an ONNX model carries no dataset: give --dataset")
            if name == "file":
                raise ValueError("--dataset: the test images of a built-in dataset (mnist, cifar10, ...); a file of "
                                 "inputs goes into a VNN-LIB property")
            test = load_dataset(name, "test", data_dir, subset=limit)
            try:
                test.check_fits(model.name if spec.name == "onnx" else spec.name, spec.input_shape, spec.num_outputs)
            except ValueError as error:
                trained = f" ({model} was trained on {model_dataset})" if model_dataset not in (None, name) else ""
                raise ValueError(f"{error}{trained}") from None
    except (FileNotFoundError, ValueError) as error:  # OnnxError and VnnlibError are ValueErrors
        raise fail(str(error)) from None
    if prop is not None:  # one input: a line when it starts, since it may take all of --timeout
        console.print(f"verifying {prop} on {model} (at most {timeout:g} s)", markup=False, highlight=False)
        verdict = verify_cases(spec, theta, cases, options, torch.Generator().manual_seed(0))
        undecided = "timeout" if verdict.decided_by == "timeout" else "unknown"
        answer = {"verified": "unsat", "falsified": "sat"}.get(verdict.status, undecided)
        outputs = None
        if verdict.counterexample is not None:
            from gls_core import forward

            outputs = forward(spec, theta.view(1, -1), verdict.counterexample.unsqueeze(0))[0, 0]
        if result is not None:
            result.write_text(result_text(answer, verdict.counterexample, outputs))
        if json_file is not None:
            json_file.write_text(json.dumps({"result": answer, **verdict.to_dict()}))
        typer.echo(answer)
        return
    assert eps is not None
    x, y = test.x.double(), test.y
    verdicts = []
    rows = []
    with Reporter("verify", x.shape[0], unit="input") as bar:
        for index, verdict in enumerate(verify_each(spec, theta, x, y, eps, options)):
            verdicts.append(verdict)
            rows.append({"index": index, "label": int(y[index]), **verdict.to_dict()})
            counts = summarize(verdicts)
            bar.update(index + 1, status=f"verified {counts['verified']} falsified {counts['falsified']} "
                                         f"unknown {counts['unknown']}")
    summary = {**summarize(verdicts), "eps": eps, "timeout": timeout, "method": method, "model": str(model)}
    if json_file is not None:
        json_file.write_text(json.dumps({"summary": summary, "verdicts": rows}))
    table = Table(title=f"{spec.name}, eps {eps}, {summary['n']} test images, {timeout:g} s each")
    for key in ("n", "verified", "falsified", "unknown", "seconds_median", "seconds_p95", "subdomains_per_second"):
        table.add_column(key.replace("_", " "))
    table.add_row(*(str(summary[key]) for key in ("n", "verified", "falsified", "unknown", "seconds_median",
                                                   "seconds_p95", "subdomains_per_second")))
    out.print(table)
