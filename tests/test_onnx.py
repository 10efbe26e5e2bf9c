"""ONNX import and export: round trips, files written by torch.onnx, folded BatchNorm, refused operators."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from gls_core import compute_bounds, forward, kaiming_uniform, network
from gls_core.nets import InputNormalization, from_sequential
from gls_core.nets.onnx_io import OnnxError, from_onnx, to_onnx
from gls_core.nets.spec import Linear, ReLU
from gls_core.verify import Property, VerifyOptions, verify_property

# torch.onnx's TorchScript exporter (the one that needs no onnxscript) warns that it is the legacy one.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _torch_onnx(net: nn.Sequential, input_shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.zeros(1, *input_shape),), buffer, dynamo=False,
                      input_names=["x"], output_names=["logits"])
    return buffer.getvalue()


@pytest.mark.parametrize("arch, dataset", [("cnn3-tiny", "mnist"), ("cnn3", "cifar10"), ("fc-20x10", "mnist")])
def test_export_then_import_gives_the_same_network_and_bounds(arch: str, dataset: str, tmp_path: Path) -> None:
    spec = network(arch, dataset)
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(0))
    path = tmp_path / "model.onnx"
    to_onnx(spec, theta, path)
    spec_back, theta_back = from_onnx(path)
    assert spec_back.layers == spec.layers and spec_back.input_shape == spec.input_shape
    torch.testing.assert_close(theta_back, theta)
    x = torch.rand(3, *spec.input_shape, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(outputs, forward(spec, theta.view(1, -1), x)[0].numpy(), rtol=1e-4, atol=1e-5)
    for method in ("ibp", "deeppoly"):
        ours = compute_bounds(spec, x, 0.01, method, params=theta)
        back = compute_bounds(spec_back, x, 0.01, method, params=theta_back)
        torch.testing.assert_close(ours, back)


def test_models_written_by_torch_onnx_import_to_the_same_bounds() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(InputNormalization((0.5,), (0.25,)), nn.Conv2d(1, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 7 * 7, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():  # non-trivial running statistics, so folding matters
        net[2].running_mean.uniform_(-0.5, 0.5)
        net[2].running_var.uniform_(0.5, 2.0)
        net[2].weight.uniform_(0.5, 1.5)
    net.eval()
    spec_ref, theta_ref = from_sequential(net, (1, 14, 14))
    spec, theta = from_onnx(_torch_onnx(net, (1, 14, 14)))
    assert spec.layers == spec_ref.layers
    x = torch.rand(4, 1, 14, 14, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(forward(spec, theta.view(1, -1), x)[0], net(x), rtol=1e-4, atol=1e-5)
    for method in ("crown-ibp", "deeppoly"):
        torch.testing.assert_close(compute_bounds(spec, x, 0.02, method, params=theta),
                                   compute_bounds(spec_ref, x, 0.02, method, params=theta_ref.to(torch.float32)),
                                   rtol=1e-4, atol=1e-4)


def test_matmul_add_and_reshape_are_read_as_linear_and_flatten() -> None:
    w1, b1 = np.random.default_rng(0).normal(size=(16, 5)), np.random.default_rng(1).normal(size=5)
    w2 = np.random.default_rng(2).normal(size=(5, 3))
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"], name="reshape"),
             helper.make_node("MatMul", ["flat", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    inits = [numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"),
             numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(b1.astype(np.float32), "b1"),
             numpy_helper.from_array(w2.astype(np.float32), "w2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    spec, theta = from_onnx(model.SerializeToString())
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    expected = np.maximum(x.reshape(2, -1).numpy() @ w1 + b1, 0) @ w2
    np.testing.assert_allclose(forward(spec, theta.view(1, -1), x)[0].numpy(), expected, rtol=1e-4, atol=1e-4)


def _single_node_model(op: str, **attributes: object) -> bytes:
    node = helper.make_node(op, ["x"], ["y"], name="the-node", **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_unsupported_operators_are_refused_with_node_and_operator() -> None:
    with pytest.raises(OnnxError, match=r"node 'the-node': operator Sigmoid is not supported"):
        from_onnx(_single_node_model("Sigmoid"))
    net = nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 12 * 12, 3))
    with pytest.raises(OnnxError, match=r"\(Conv\): only square, ungrouped, undilated"):
        from_onnx(_torch_onnx(net, (1, 14, 14)))
    with pytest.raises(OnnxError, match="not a readable ONNX model"):
        from_onnx(b"not an onnx file")
    with pytest.raises(FileNotFoundError):
        from_onnx("/nonexistent/model.onnx")


def _chain_model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], input_dims: list[int],
                 outputs: int) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, input_dims)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT,
                                                             [1, outputs])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _acas_like() -> bytes:
    """ACAS Xu's shape: an elementwise Sub/Div on a (1, 1, 5) input, Flatten, MatMul+Add, and a Relu after the
    output layer (as in the ERAN MNIST networks)."""
    rng = np.random.default_rng(4)
    inits = {"mean": rng.normal(size=5), "std": rng.uniform(0.5, 2, size=5), "w1": rng.normal(size=(5, 8)),
             "b1": rng.normal(size=8), "w2": rng.normal(size=(8, 3)), "b2": rng.normal(size=3)}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"], name="sub"),
             helper.make_node("Div", ["s", "std"], ["n"], name="div"),
             helper.make_node("Flatten", ["n"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="gemm2"),
             helper.make_node("Relu", ["y"], ["out"], name="relu-after-output")]
    return _chain_model(nodes, inits, [1, 1, 1, 5], 3)


def test_elementwise_normalisation_and_a_relu_after_the_output_layer_compute_what_onnxruntime_does() -> None:
    data = _acas_like()
    spec, theta = from_onnx(data)
    assert isinstance(spec.layers[-1], Linear) and isinstance(spec.layers[-2], ReLU)
    x = torch.randn(6, 1, 1, 5, generator=torch.Generator().manual_seed(5))
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    ours = forward(spec, theta.view(1, -1), x)[0].numpy()
    for i in range(x.shape[0]):
        (theirs,) = session.run(None, {"x": x[i:i + 1].numpy()})
        np.testing.assert_allclose(ours[i], theirs[0], rtol=1e-4, atol=1e-5)
    assert (ours >= 0).all() and (ours == 0).any()  # post-ReLU outputs, some of them clipped


def test_a_property_on_post_relu_outputs_is_decided_exactly() -> None:
    spec, theta = from_onnx(_acas_like())
    lower, upper = -torch.ones(1, 1, 5, dtype=torch.float64), torch.ones(1, 1, 5, dtype=torch.float64)
    # Y_0 >= -0.001 always holds after a ReLU; Y_0 >= 0.001 fails wherever the ReLU clips Y_0.
    holds = Property(lower, upper, torch.tensor([[1.0, 0, 0]], dtype=torch.float64),
                     torch.tensor([1e-3], dtype=torch.float64))
    fails = Property(lower, upper, holds.C, -holds.d)
    options = VerifyOptions(timeout=20)
    assert verify_property(spec, theta.double(), holds, options).status == "verified"
    verdict = verify_property(spec, theta.double(), fails, options)
    assert verdict.status == "falsified" and verdict.counterexample is not None
    assert float(fails.rows(spec, theta.double(), verdict.counterexample.unsqueeze(0)).min()) <= 0


def test_a_convolution_as_the_output_layer_ends_with_an_identity_linear() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 3, 4), nn.Flatten())
    spec, theta = from_onnx(_torch_onnx(net, (1, 8, 8)))
    assert isinstance(spec.layers[-1], Linear)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(forward(spec, theta.view(1, -1), x)[0], net(x), rtol=1e-4, atol=1e-5)


def test_what_cannot_be_read_is_refused_naming_the_node_never_a_traceback() -> None:
    inits = {"mean": np.zeros(3), "w": np.ones((4, 2))}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"], name="odd-sub"),
             helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")]
    with pytest.raises(OnnxError, match=r"does not broadcast"):
        from_onnx(_chain_model(nodes, inits, [1, 4], 2))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="bad-matmul")]
    with pytest.raises(OnnxError, match=r"node 'bad-matmul' \(MatMul\)"):
        from_onnx(_chain_model(nodes, {"w": np.ones((3, 2))}, [1, 4], 2))
