"""Which ONNX files of a benchmark tree import, and whether each import computes what onnxruntime computes.

    python bench/onnx_coverage.py DIR [DIR ...]

Every ``*.onnx`` below the directories is read with ``from_onnx``. An import must either succeed and
agree with onnxruntime on random inputs (max abs difference printed), or be refused with an
``OnnxError`` that names the node and operator; any other exception is a defect and is counted as a
crash. Prints one line per file and a table of the outcomes per benchmark folder.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from gls_core.nets.onnx_io import OnnxError, from_onnx
from gls_core.population import forward


def agreement(path: Path, spec, theta: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    """Largest |ours - onnxruntime| over 8 random inputs in [0, 1]."""
    model = onnx.load(str(path))
    initializers = {t.name for t in model.graph.initializer}
    (graph_input,) = [i for i in model.graph.input if i.name not in initializers]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    x = torch.rand(8, *spec.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = forward(spec, theta.double().view(1, -1), x)[0].numpy()
    for i in range(x.shape[0]):
        (theirs,) = session.run(None, {graph_input.name: x[i].numpy().astype(np.float32).reshape(1, *dims[1:])})
        worst = max(worst, float(np.abs(theirs.reshape(-1) - ours[i]).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    args = parser.parse_args()
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for root in args.dirs:
        for path in sorted(root.rglob("*.onnx")):
            folder = next((p.name for p in path.parents if p.parent.name == "benchmarks"), path.parent.name)
            try:
                spec, theta = from_onnx(path)
                difference = agreement(path, spec, theta)
                outcome = "imported" if difference < 1e-4 else "DISAGREES"
                line = f"{outcome}, {len(spec.layers)} layers, input {spec.input_shape}, max diff {difference:.1e}"
            except OnnxError as error:
                outcome, line = "refused", f"refused: {str(error).splitlines()[0][:140]}"
            except Exception as error:  # noqa: BLE001 - a defect to count, not to hide
                outcome, line = "CRASH", f"CRASH {type(error).__name__}: {error}"
            table[folder][outcome] += 1
            print(f"{path}: {line}", flush=True)
    print("\n| benchmark | files | imported | refused | disagrees | crash |\n| --- | --- | --- | --- | --- | --- |")
    for folder, counts in sorted(table.items()):
        print(f"| {folder} | {sum(counts.values())} | {counts['imported']} | {counts['refused']} | "
              f"{counts['DISAGREES']} | {counts['CRASH']} |")


if __name__ == "__main__":
    main()
