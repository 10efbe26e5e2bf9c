"""`gls export RUN --format onnx|torchscript|safetensors`: a trained model for other tools."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .console import fail, out, output_file


class Format(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    safetensors = "safetensors"


def export_command(run: Annotated[Path, typer.Argument(help="run directory or model.safetensors")],
                   fmt: Annotated[Format, typer.Option("--format", help="onnx (for verifiers), torchscript, or "
                                                                        "safetensors (a torch.nn.Sequential state "
                                                                        "dict)")] = Format.onnx,
                   out_file: Annotated[Path | None, typer.Option("--out", help="file to write [default: next to "
                                                                                "the model, e.g. RUN/model.onnx]")]
                   = None) -> None:
    """Export a trained model, checked to compute the same outputs; see docs/training.md for loading it back."""
    from gls_core.nets.export import SUFFIXES, export_model
    from gls_core.training import load_model

    try:
        spec, theta, metadata = load_model(run)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    base, stem = (run, "model") if run.is_dir() else (run.parent, run.stem)
    target = out_file or base / f"{stem}{SUFFIXES[fmt.value]}"
    if target.is_dir():
        raise fail(f"--out {target} is a directory; name the file, e.g. {target / f'{stem}{SUFFIXES[fmt.value]}'}")
    output_file(target)
    try:
        export_model(spec, theta, fmt.value, target, {"arch": metadata["arch"], "dataset": metadata["dataset"]})
    except OSError as error:
        raise fail(f"cannot write {target}: {error.strerror or error}") from None
    except ValueError as error:
        raise fail(str(error)) from None
    out.print(f"wrote {target} ({spec.name}, {fmt.value})")
