"""`gls export`: each format loads back into PyTorch and computes the trained model's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file

from gls_core import forward, network, to_sequential
from gls_core.nets import kaiming_uniform
from gls_core.nets.onnx_io import from_onnx
from gls_core.training import save_model

gls = run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    spec = network("cnn3-tiny", "mnist")
    save_model(folder / "model.safetensors", kaiming_uniform(spec, torch.Generator().manual_seed(5)), "cnn3-tiny",
               "mnist")
    return folder


def expected(x: torch.Tensor, run_dir: Path) -> torch.Tensor:
    from gls_core.training import load_model

    spec, theta, _ = load_model(run_dir)
    return forward(spec, theta.view(1, -1), x)[0]


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt"),
                                           ("safetensors", "model.state_dict.safetensors")])
def test_every_format_loads_back_with_the_same_outputs(run_dir: Path, fmt: str, name: str) -> None:
    done = gls("export", str(run_dir), "--format", fmt)
    assert done.returncode == 0, done.stderr
    path = run_dir / name
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if fmt == "onnx":
            spec, theta = from_onnx(path)
            got = forward(spec, theta.view(1, -1), x)[0]
        elif fmt == "torchscript":
            got = torch.jit.load(str(path))(x)
        else:
            net = to_sequential(network("cnn3-tiny", "mnist"))
            net.load_state_dict(load_file(str(path)))
            got = net(x)
    assert torch.allclose(got, expected(x, run_dir), atol=1e-5)


def test_export_names_a_missing_model_and_an_unknown_format(tmp_path: Path, run_dir: Path) -> None:
    missing = gls("export", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no model at" in missing.stderr
    unknown = gls("export", str(run_dir), "--format", "pickle")
    assert unknown.returncode == 2 and "pickle" in unknown.stderr
    explicit = gls("export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "elsewhere.onnx"))
    assert explicit.returncode == 0 and (tmp_path / "elsewhere.onnx").is_file()
