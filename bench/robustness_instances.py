"""A VNN-COMP style benchmark folder of L_inf robustness properties of a trained GLS model on MNIST test images.

    python bench/robustness_instances.py RUN_OR_MODEL OUT_DIR [--eps 0.1] [--limit 25] [--timeout 30]

Writes ``OUT_DIR/onnx/model.onnx`` (``gls export``'s writer, checked against onnxruntime), one
``OUT_DIR/vnnlib/prop_<i>_<eps>.vnnlib`` per correctly classified image among the first ``--limit``
(input box ``[x - eps, x + eps]`` clipped to [0, 1]; unsafe when any other logit reaches the true
one, one disjunct per class, as the VNN-COMP MNIST benchmarks write it) and ``instances.csv``, so
``bench/vnncomp.py OUT_DIR`` runs GLS and alpha-beta-CROWN on the same instances.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gls_core.data import load_mnist
from gls_core.nets.onnx_io import to_onnx
from gls_core.population import forward
from gls_core.training import load_model


def vnnlib_text(x: torch.Tensor, label: int, eps: float, classes: int) -> str:
    flat = x.reshape(-1).double()
    lower, upper = (flat - eps).clamp(0, 1), (flat + eps).clamp(0, 1)
    lines = [f"; MNIST test image, label {label}, eps {eps}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(flat.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    for i in range(flat.numel()):
        lines += [f"(assert (>= X_{i} {float(lower[i])!r}))", f"(assert (<= X_{i} {float(upper[i])!r}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label)
    lines.append(f"(assert (or {others}))")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="run directory or model.safetensors")
    parser.add_argument("out", type=Path)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    spec, theta, _ = load_model(args.model)
    (args.out / "onnx").mkdir(parents=True, exist_ok=True)
    (args.out / "vnnlib").mkdir(parents=True, exist_ok=True)
    to_onnx(spec, theta, args.out / "onnx" / "model.onnx")
    x, y = load_mnist("test")
    x, y = x[: args.limit], y[: args.limit]
    predicted = forward(spec, theta.view(1, -1), x)[0].argmax(1)
    rows = []
    for i in range(len(y)):
        if int(predicted[i]) != int(y[i]):
            continue  # misclassified: not a robustness question
        name = f"prop_{i}_{args.eps}.vnnlib"
        (args.out / "vnnlib" / name).write_text(vnnlib_text(x[i], int(y[i]), args.eps, spec.num_outputs))
        rows.append(f"onnx/model.onnx,vnnlib/{name},{args.timeout:g}")
    (args.out / "instances.csv").write_text("\n".join(rows) + "\n")
    print(f"{len(rows)} instances ({len(y) - len(rows)} misclassified images skipped) in {args.out}")


if __name__ == "__main__":
    main()
