"""ONNX import and export of feed-forward ReLU networks, as (NetSpec, theta).

Import reads a chain of nodes: Conv, Gemm, MatMul (+ Add), Relu, Flatten, Reshape to (batch, -1),
Sub/Div input normalisation (per channel, or elementwise and folded into the first fully connected
layer), BatchNormalization (folded into the affine layer before it), Identity and Constant. Outputs
read after a ReLU (or a Conv) get an identity Linear appended, since the bounds need the logits to
be an affine layer's and the ReLU must stay exact. Anything else is refused with the node's name
and operator type. Export writes the
same operators (Sub, Div, Conv, Gemm, Relu, Flatten) and checks the file with onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .spec import Conv2d, Flatten, Layer, Linear, NetSpec, Normalize, ReLU, Shape

OPSET = 13


class OnnxError(ValueError):
    """The file is not a network this project can read; the message names the node and operator."""


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Reader:
    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise OnnxError(f"the graph must have one input and one output, got {len(inputs)} and {len(graph.output)}")
        dims = inputs[0].type.tensor_type.shape.dim
        shape = tuple(int(d.dim_value) for d in dims[1:])
        if not shape or min(shape) < 1:
            raise OnnxError(f"input {inputs[0].name!r}: needs a batch axis and fixed sizes, got {list(dims)}")
        self.input_shape: Shape = shape
        self.current = inputs[0].name
        self.output = graph.output[0].name
        self.layers: list[Layer] = []
        self.weights: list[np.ndarray] = []  # weight, bias per affine layer
        self.shape: Shape = shape
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.nodes = list(graph.node)

    def constant(self, node: onnx.NodeProto, name: str) -> np.ndarray:
        if name not in self.constants:
            raise OnnxError(f"node {node.name!r} ({node.op_type}): input {name!r} must be a constant")
        return self.constants[name].astype(np.float64) if self.constants[name].dtype.kind == "f" \
            else self.constants[name]

    def other_input(self, node: onnx.NodeProto) -> str:
        """The input that is not the running tensor (for binary operators)."""
        if len(node.input) != 2 or self.current not in node.input:
            raise OnnxError(f"node {node.name!r} ({node.op_type}): expected the running tensor and one constant")
        return node.input[1] if node.input[0] == self.current else node.input[0]

    def add_affine(self, layer: Layer, weight: np.ndarray, bias: np.ndarray) -> None:
        pending = self.pending_normalisation() if isinstance(layer, Linear) else None
        if pending is not None:
            mean, std = (v.reshape(-1) for v in pending)  # W ((x - m) / s) + b = (W / s) x + (b - (W / s) m)
            weight = weight / std.reshape(1, -1)
            bias = bias - weight @ mean
            self.mean = self.std = None
        self.flush_normalize()
        self.shape = layer.output_shape(self.shape, len(self.layers))
        self.layers.append(layer)
        self.weights += [weight, bias]

    def pending_normalisation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The pending Sub/Div as full-size (mean, std) of the running shape, by ONNX broadcasting."""
        if self.mean is None and self.std is None:
            return None
        full = []
        for value, neutral in ((self.mean, 0.0), (self.std, 1.0)):
            value = np.array(neutral) if value is None else np.asarray(value, dtype=np.float64)
            try:
                full.append(np.broadcast_to(value, (1, *self.shape)).reshape(self.shape))
            except ValueError:
                raise OnnxError(f"input normalisation (Sub/Div): constant of shape {value.shape} does not broadcast "
                                f"to the input {self.shape}") from None
        return full[0], full[1]

    def flush_normalize(self, flattening: bool = False) -> None:
        """The pending Sub/Div as a Normalize layer (per channel, at a (C, H, W) input), or carried through a
        Flatten to be folded into the first fully connected layer; anything else is refused."""
        pending = self.pending_normalisation()
        if pending is None:
            return
        mean, std = pending
        if (len(self.shape) == 3 and not self.layers and bool((mean == mean[:, :1, :1]).all())
                and bool((std == std[:, :1, :1]).all())):
            # float32 constants come back as the shortest decimal that round-trips (0.4914, not 0.49140000343...).
            self.layers.append(Normalize(tuple(float(str(np.float32(v))) for v in mean[:, 0, 0]),
                                         tuple(float(str(np.float32(v))) for v in std[:, 0, 0])))
            self.mean = self.std = None
        elif flattening and not self.layers:
            self.mean, self.std = mean.reshape(-1), std.reshape(-1)
        else:
            raise OnnxError("input normalisation (Sub/Div) is supported per channel on a (C, H, W) input, or "
                            "elementwise before the first fully connected layer")

    def end_with_linear(self) -> None:
        """Outputs read after a ReLU (or a Conv) get an identity Linear, so the logits are an affine layer's."""
        if self.layers and isinstance(self.layers[-1], Linear):
            return
        self._flatten()
        size = self.shape[0]
        self.add_affine(Linear(size, size), np.eye(size), np.zeros(size))

    def read(self) -> tuple[NetSpec, torch.Tensor]:
        index = 0
        while index < len(self.nodes):
            node = self.nodes[index]
            index += 1
            if node.op_type == "Constant":
                (value,) = [a for a in node.attribute if a.name == "value"] or [None]
                if value is None:
                    raise OnnxError(f"node {node.name!r} (Constant): only tensor constants are supported")
                self.constants[node.output[0]] = numpy_helper.to_array(value.t)
                continue
            if self.current not in node.input:
                raise OnnxError(f"node {node.name!r} ({node.op_type}): the graph must be a chain; it does not read "
                                f"{self.current!r}")
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None:
                raise OnnxError(f"node {node.name!r}: operator {node.op_type} is not supported")
            try:
                consumed = handler(node, self.nodes[index] if index < len(self.nodes) else None)
            except OnnxError:
                raise
            except (ValueError, TypeError, KeyError, IndexError) as error:
                raise OnnxError(f"node {node.name!r} ({node.op_type}): cannot be read ({error})") from None
            index += consumed
            self.current = node.output[0] if not consumed else self.nodes[index - 1].output[0]
        if self.current != self.output:
            raise OnnxError(f"the chain ends at {self.current!r}, not at the graph output {self.output!r}")
        self.end_with_linear()
        try:
            spec = NetSpec(self.input_shape, tuple(self.layers), name="onnx")
        except (ValueError, TypeError) as error:
            raise OnnxError(f"the network is not supported: {error}") from None
        theta = torch.cat([torch.from_numpy(np.array(w, dtype=np.float64)).reshape(-1)
                           for w in self.weights]).to(torch.float32)
        return spec, theta

    # Each handler returns how many following nodes it consumed.
    def _op_Identity(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        return 0

    def _op_Relu(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        self.flush_normalize()
        self.layers.append(ReLU())
        return 0

    def _op_Sub(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        if node.input[0] != self.current or self.mean is not None or self.std is not None:
            raise OnnxError(f"node {node.name!r} (Sub): only x - mean at the input is supported")
        self.mean = self.constant(node, node.input[1])
        return 0

    def _op_Div(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        if node.input[0] != self.current or self.std is not None:
            raise OnnxError(f"node {node.name!r} (Div): only x / std at the input is supported")
        self.std = self.constant(node, node.input[1])
        return 0

    def _flatten(self) -> None:
        self.flush_normalize(flattening=True)
        if len(self.shape) > 1:
            self.layers.append(Flatten())
            self.shape = (math.prod(self.shape),)

    def _op_Flatten(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        if _attributes(node).get("axis", 1) != 1:
            raise OnnxError(f"node {node.name!r} (Flatten): only axis = 1 is supported")
        self._flatten()
        return 0

    def _op_Reshape(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        target = [int(v) for v in self.constant(node, node.input[1]).reshape(-1)]
        size = math.prod(self.shape)
        if len(target) != 2 or target[1] not in (-1, size) or target[0] not in (-1, 0, 1):
            raise OnnxError(f"node {node.name!r} (Reshape): only a reshape to (batch, {size}) is supported, "
                            f"got {target}")
        self._flatten()
        return 0

    def _op_Conv(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        weight = self.constant(node, node.input[1])
        has_bias = len(node.input) > 2 and node.input[2]
        bias = self.constant(node, node.input[2]) if has_bias else np.zeros(weight.shape[0])
        a = _attributes(node)
        kernel = list(a.get("kernel_shape", weight.shape[2:]))
        strides, pads = list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0]))
        if (len(kernel) != 2 or kernel[0] != kernel[1] or strides[0] != strides[1] or len(set(pads)) != 1
                or a.get("group", 1) != 1 or list(a.get("dilations", [1, 1])) != [1, 1]
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            raise OnnxError(f"node {node.name!r} (Conv): only square, ungrouped, undilated convolutions with equal "
                            f"stride and padding are supported (kernel {kernel}, strides {strides}, pads {pads})")
        layer = Conv2d(int(weight.shape[1]), int(weight.shape[0]), int(kernel[0]), int(strides[0]), int(pads[0]))
        return self._affine_then_batchnorm(node, following, layer, weight, bias)

    def _op_Gemm(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        a = _attributes(node)
        if a.get("transA", 0) or node.input[0] != self.current:
            raise OnnxError(f"node {node.name!r} (Gemm): only x @ W (transA = 0) is supported")
        weight = self.constant(node, node.input[1]) * float(a.get("alpha", 1.0))
        weight = weight if a.get("transB", 0) else weight.T
        bias = (self.constant(node, node.input[2]).reshape(-1) * float(a.get("beta", 1.0))
                if len(node.input) > 2 and node.input[2] else np.zeros(weight.shape[0]))
        layer = Linear(int(weight.shape[1]), int(weight.shape[0]))
        return self._affine_then_batchnorm(node, following, layer, weight, np.broadcast_to(bias, (weight.shape[0],)))

    def _op_MatMul(self, node: onnx.NodeProto, following: onnx.NodeProto | None) -> int:
        if node.input[0] != self.current:
            raise OnnxError(f"node {node.name!r} (MatMul): only x @ W is supported")
        weight = self.constant(node, node.input[1]).T
        bias = np.zeros(weight.shape[0])
        consumed = 0
        if following is not None and following.op_type == "Add" and node.output[0] in following.input:
            other = following.input[1] if following.input[0] == node.output[0] else following.input[0]
            bias = np.broadcast_to(self.constant(following, other).reshape(-1), (weight.shape[0],))
            consumed = 1
        self.add_affine(Linear(int(weight.shape[1]), int(weight.shape[0])), weight, bias)
        return consumed

    def _affine_then_batchnorm(self, node: onnx.NodeProto, following: onnx.NodeProto | None, layer: Layer,
                               weight: np.ndarray, bias: np.ndarray) -> int:
        if following is None or following.op_type != "BatchNormalization" or following.input[0] != node.output[0]:
            self.add_affine(layer, weight, bias)
            return 0
        scale, shift, mean, var = (self.constant(following, name) for name in following.input[1:5])
        factor = scale / np.sqrt(var + float(_attributes(following).get("epsilon", 1e-5)))
        weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
        self.add_affine(layer, weight, (bias - mean) * factor + shift)
        return 1


def from_onnx(source: str | Path | bytes) -> tuple[NetSpec, torch.Tensor]:
    """Read an ONNX file (or its bytes) into a spec and its flat float32 weights."""
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"no ONNX model at {source}")
    try:
        model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
    except Exception as error:  # protobuf's DecodeError and onnx's own errors share no base class
        name = "the given bytes" if isinstance(source, bytes) else str(source)
        raise OnnxError(f"{name}: not a readable ONNX model ({error})") from None
    return _Reader(model).read()


Constant = Callable[[str, np.ndarray], str]  # adds an initializer of the layer, returns its name


def _normalize_nodes(layer: Any, inputs: list[str], out: str, constant: Constant) -> list[onnx.NodeProto]:
    shifted = f"{out}.shifted"
    return [helper.make_node("Sub", [inputs[0], constant("mean", np.array(layer.mean).reshape(-1, 1, 1))],
                             [shifted], name=f"{out}.sub"),
            helper.make_node("Div", [shifted, constant("std", np.array(layer.std).reshape(-1, 1, 1))], [out],
                             name=f"{out}.div")]


# The nodes that compute each layer type; ``inputs`` is the running tensor, then weight and bias if any.
_NODES: dict[type, Callable[[Any, list[str], str, Constant], list[onnx.NodeProto]]] = {
    Normalize: _normalize_nodes,
    Conv2d: lambda layer, inputs, out, constant: [helper.make_node(
        "Conv", inputs, [out], name=f"{out}.conv", kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2,
        pads=[layer.padding] * 4)],
    Linear: lambda layer, inputs, out, constant: [helper.make_node("Gemm", inputs, [out], name=f"{out}.gemm",
                                                                   transB=1)],
    ReLU: lambda layer, inputs, out, constant: [helper.make_node("Relu", inputs, [out], name=f"{out}.relu")],
    Flatten: lambda layer, inputs, out, constant: [helper.make_node("Flatten", inputs, [out], name=f"{out}.flatten",
                                                                    axis=1)],
}


def to_onnx(spec: NetSpec, theta: torch.Tensor, path: str | Path | None = None, check: bool = True) -> bytes:
    """An ONNX model computing the network (batch axis first); written to ``path`` when given.

    With ``check``, onnxruntime runs it on random inputs and must agree with the project's forward pass.
    """
    theta = theta.detach().to(torch.float32).reshape(-1)
    if theta.numel() != spec.num_params:
        raise ValueError(f"theta must have {spec.num_params} elements for {spec.name}, got {theta.numel()}")
    nodes, initializers = [], []
    current = "input"
    for index, layer in enumerate(spec.layers):
        out = f"layer{index}"

        def constant(name: str, value: np.ndarray, index: int = index) -> str:
            initializers.append(numpy_helper.from_array(value.astype(np.float32), f"layer{index}.{name}"))
            return f"layer{index}.{name}"

        inputs = [current]
        if layer.affine:
            params = theta.view(1, -1)
            inputs += [constant("weight", spec.weight(params, index)[0].numpy()),
                       constant("bias", spec.bias(params, index)[0].numpy())]
        nodes += _NODES[type(layer)](layer, inputs, out, constant)
        current = out
    graph = helper.make_graph(
        nodes, spec.name,
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", *spec.input_shape])],
        [helper.make_tensor_value_info(current, onnx.TensorProto.FLOAT, ["batch", spec.num_outputs])],
        initializers)
    model = helper.make_model(graph, producer_name="gls", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if check:
        _check_with_onnxruntime(spec, theta, data)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def _check_with_onnxruntime(spec: NetSpec, theta: torch.Tensor, data: bytes) -> None:
    import onnxruntime

    from .forward import forward

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.rand(4, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    (ours,) = session.run(None, {"input": x.numpy()})
    reference = forward(spec, theta.view(1, -1), x)[0].numpy()
    if not np.allclose(ours, reference, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"the exported model disagrees with the network by {np.abs(ours - reference).max():g}")
