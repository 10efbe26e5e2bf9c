"""The in-process verbs fed the mismatches a user can make: one `error:` line naming both sides, exit 2, no traceback.

A model of one dataset given another's images, an ONNX model whose input is flat, a VNN-LIB property
written for another network, a file where a model is expected, a directory where a file is, and a
resume or a warm start that would change what the run trains. Each case runs the verb as a user
would (the `gls` app in this process) on a real trained run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli, train_run
from servers import shared_data_dir

from gls_core.nets.onnx_io import to_onnx
from gls_core.nets.spec import Linear, NetSpec, ReLU
from gls_core.nets.zoo import network
from gls_core.training import save_model

CONFIG = {
    "seed": 3, "estimator": "pgpe", "relaxation": "deeppoly", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 32, "test_subset": 40},
    "model": {"arch": "cnn3-tiny"},
    "schedule": {"epochs": 1, "lr": 0.01, "lr_milestones": [], "eps_ramp_epochs": 0, "steps_per_epoch": 2},
    "pgpe": {"popsize": 8},
    "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
}
DATA = str(shared_data_dir())
DIGITS, MNIST, CIFAR = "(1, 8, 8)", "(1, 28, 28)", "(3, 32, 32)"


@dataclass(frozen=True)
class Files:
    root: Path
    config: Path
    run: Path
    onnx: Path
    flat_onnx: Path
    other_model: Path


def vnnlib(inputs: int, outputs: int) -> str:
    """A robustness property of ``inputs`` inputs around 0.5 against class 0 of ``outputs`` classes."""
    lines = [*(f"(declare-const X_{i} Real)" for i in range(inputs)),
             *(f"(declare-const Y_{j} Real)" for j in range(outputs))]
    lines += [f"(assert (<= X_{i} 0.6))\n(assert (>= X_{i} 0.4))" for i in range(inputs)]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_0))" for j in range(1, outputs)) + "))")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("mismatch")
    run = train_run(root, CONFIG)
    exported = run_cli("export", str(run), "--out", str(root / "digits.onnx"))
    assert exported.returncode == 0, exported.stderr
    flat = NetSpec((64,), (Linear(64, 16), ReLU(), Linear(16, 10)), name="flat")
    to_onnx(flat, torch.zeros(flat.num_params), root / "flat.onnx", check=True)
    fc = network("fc-16", "digits")
    save_model(root / "fc16.safetensors", torch.zeros(fc.num_params), "fc-16", "digits")
    (root / "mnist.vnnlib").write_text(vnnlib(784, 10))
    (root / "small.vnnlib").write_text(vnnlib(4, 10))
    (root / "wide.vnnlib").write_text(vnnlib(64, 12))
    np.savez(root / "mnist-like.npz", x=np.zeros((40, 1, 28, 28), dtype=np.uint8), y=np.arange(40) % 10)
    return Files(root, root / "job.yaml", run, root / "digits.onnx", root / "flat.onnx", root / "fc16.safetensors")


Args = Callable[[Files], list[str]]
VERIFY = ["--eps", "0.01", "--limit", "2", "--timeout", "1", "--data-dir", DATA]
CASES: dict[str, tuple[Args, list[str]]] = {
    # case: (the command line, what the one error line must name)
    "verify-digits-run-on-mnist": (lambda f: ["verify", str(f.run), "--dataset", "mnist", *VERIFY],
                                   ["cnn3-tiny-digits", DIGITS, "mnist", MNIST, "trained on digits"]),
    "verify-digits-run-on-cifar10": (lambda f: ["verify", str(f.run), "--dataset", "cifar10", *VERIFY],
                                     [DIGITS, "cifar10", CIFAR]),
    "verify-digits-onnx-on-mnist": (lambda f: ["verify", str(f.onnx), "--dataset", "mnist", *VERIFY],
                                    ["digits.onnx", DIGITS, MNIST]),
    "verify-flat-onnx-on-images": (lambda f: ["verify", str(f.flat_onnx), "--dataset", "digits", *VERIFY],
                                   ["flat.onnx", "(64,)", DIGITS]),
    "verify-onnx-without-dataset": (lambda f: ["verify", str(f.onnx), *VERIFY], ["give --dataset"]),
    "verify-dataset-file": (lambda f: ["verify", str(f.run), "--dataset", "file", *VERIFY], ["--dataset"]),
    "verify-mnist-property": (lambda f: ["verify", str(f.run), str(f.root / "mnist.vnnlib")],
                              ["mnist.vnnlib", "X_64 is out of range", "64 inputs", DIGITS, "declares 784"]),
    "verify-small-property": (lambda f: ["verify", str(f.run), str(f.root / "small.vnnlib")],
                              ["small.vnnlib", "declares 4 inputs", "takes 64", DIGITS]),
    "verify-property-with-more-outputs": (lambda f: ["verify", str(f.run), str(f.root / "wide.vnnlib")],
                                          ["wide.vnnlib", "Y_10 is out of range", "10 outputs", "declares 12"]),
    "verify-model-as-property": (lambda f: ["verify", str(f.run), str(f.run / "model.safetensors")],
                                 ["model.safetensors", "not a VNN-LIB text file"]),
    "evaluate-onnx": (lambda f: ["evaluate", str(f.onnx), "--eps", "0.01", "--limit", "2"],
                      ["digits.onnx", "an ONNX file", "gls verify"]),
    "evaluate-state-file": (lambda f: ["evaluate", str(f.run / "state.safetensors"), "--eps", "0.01"],
                            ["state.safetensors", "missing GLS metadata"]),
    "evaluate-empty-directory": (lambda f: ["evaluate", str(f.root), "--eps", "0.01"], ["no model at"]),
    "export-onnx": (lambda f: ["export", str(f.onnx)], ["digits.onnx", "an ONNX file"]),
    "export-to-a-directory": (lambda f: ["export", str(f.run), "--out", str(f.root)], ["--out", "is a directory"]),
    "landscape-onnx": (lambda f: ["landscape", str(f.onnx), "--out", str(f.root / "l.png")], ["an ONNX file"]),
    "landscape-to-a-directory": (lambda f: ["landscape", str(f.run), "--out", str(f.root)], ["directory"]),
    "plot-to-a-directory": (lambda f: ["plot", str(f.run), "--out", str(f.root)], ["directory"]),
    "resume-on-another-dataset": (lambda f: ["train", str(f.config), "--out", str(f.root / "copy"), "--resume",
                                             "--set", "data.dataset=mnist"],
                                  ["data.dataset: cannot change", "'digits'", "'mnist'"]),
    "resume-with-another-network": (lambda f: ["train", str(f.config), "--out", str(f.root / "copy"), "--resume",
                                               "--set", "model.arch=fc-16"],
                                    ["model.arch: cannot change", "'cnn3-tiny'", "'fc-16'"]),
    "train-on-a-file-of-other-images": (lambda f: ["train", str(f.config), "--out", str(f.root / "new"),
                                                   "--set", "data.dataset=file", "--set",
                                                   f"data.path={f.root / 'mnist-like.npz'}",
                                                   "--set", "data.input_like=digits"],
                                        ["cnn3-tiny-digits", DIGITS, "mnist-like.npz", MNIST]),
    "train-from-another-network": (lambda f: ["train", str(f.config), "--out", str(f.root / "new"), "--set",
                                              f"model.checkpoint={f.other_model}"],
                                   ["fc-16-digits", "cnn3-tiny-digits"]),
    "train-from-an-onnx-file": (lambda f: ["train", str(f.config), "--out", str(f.root / "new"), "--set",
                                           f"model.checkpoint={f.onnx}"], ["digits.onnx", "an ONNX file"]),
}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mismatch_is_one_error_line_naming_both_sides(case: str, files: Files) -> None:
    args, named = CASES[case]
    copy = files.root / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(files.run, copy)
    before = snapshot(files.root)
    refused = run_cli(*args(files))
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
    missing = [part for part in named if part not in lines[0]]
    assert not missing, (missing, lines[0])
    assert snapshot(files.root) == before  # nothing written, nothing rewritten
