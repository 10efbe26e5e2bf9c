"""A trained model in the formats other tools read: ONNX, TorchScript, or a PyTorch state dict in safetensors.

Each export is checked before it is reported written: the exported network must compute what the
project's own forward pass computes on random inputs. The way back into PyTorch:
``to_sequential(network(arch, dataset))`` then ``load_state_dict(safetensors.torch.load_file(path))``
for the state dict, ``torch.jit.load(path)`` for TorchScript.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .convert import to_sequential
from .forward import forward
from .onnx_io import to_onnx
from .spec import NetSpec

FORMATS = ("onnx", "torchscript", "safetensors")
# The state dict is not named model.safetensors: that name is the run's own flat-weights file.
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".state_dict.safetensors"}
TOLERANCE = 1e-5


class ExportError(ValueError):
    """An export whose outputs disagree with the model it came from."""


def _check(spec: NetSpec, theta: torch.Tensor, module: torch.nn.Module, what: str) -> None:
    x = torch.rand(8, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = forward(spec, theta.view(1, -1), x)[0]
        got = module(x)
    error = float((got - expected).abs().max())
    if not error <= TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ExportError(f"{what}: outputs differ from the model's by {error:.3g}")


def export_model(spec: NetSpec, theta: torch.Tensor, fmt: str, path: Path, metadata: dict[str, str]) -> Path:
    """Write (spec, theta) to ``path`` in ``fmt`` (one of :data:`FORMATS`), checked against the forward pass."""
    theta = theta.detach().to(torch.float32).reshape(-1)
    if fmt == "onnx":
        to_onnx(spec, theta, path, check=True)
        return path
    module = to_sequential(spec, theta).eval()
    if fmt == "torchscript":
        example = torch.zeros(1, *spec.input_shape)
        traced = torch.jit.trace(module, example)
        traced.save(str(path))
        _check(spec, theta, torch.jit.load(str(path)), f"TorchScript {path}")
        return path
    if fmt == "safetensors":
        state = {key: value.contiguous() for key, value in module.state_dict().items()}
        save_file(state, str(path), metadata)
        reloaded = to_sequential(spec)
        reloaded.load_state_dict(load_file(str(path)))
        _check(spec, theta, reloaded.eval(), f"state dict {path}")
        return path
    raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
