"""The paper's architectures (Table 7, App. E.4), CNN7 (Shi et al., 2021) and fully connected nets.

Every convolution and hidden dense layer is followed by a ReLU; the output layer is a Linear to
the number of classes. CIFAR-10 and TinyImageNet inputs are normalised by a fixed first layer. The
names, shapes and plans are data in :mod:`gls_core.catalog` (a config is checked against them without torch).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..catalog import ARCHITECTURES, DATASETS, ConvPlan
from .spec import Conv2d, Flatten, Layer, Linear, NetSpec, Normalize, ReLU, Shape


def build_cnn(name: str, input_shape: Shape, num_classes: int, convs: ConvPlan, dense: Sequence[int],
              normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> NetSpec:
    layers: list[Layer] = []
    if normalize is not None:
        layers.append(Normalize(*normalize))
    channels, height, width = input_shape
    for out, kernel, stride, padding in convs:
        layers += [Conv2d(channels, out, kernel, stride, padding), ReLU()]
        channels = out
        height = (height + 2 * padding - kernel) // stride + 1
        width = (width + 2 * padding - kernel) // stride + 1
    layers.append(Flatten())
    features = channels * height * width
    for hidden in dense:
        layers += [Linear(features, hidden), ReLU()]
        features = hidden
    layers.append(Linear(features, num_classes))
    return NetSpec(tuple(input_shape), tuple(layers), name=name)


def fully_connected(input_shape: Shape, widths: Sequence[int], num_classes: int, name: str = "fc") -> NetSpec:
    """A ReLU MLP; ``input_shape`` may be an image shape (flattened first) or (N,)."""
    layers: list[Layer] = []
    features = 1
    for size in input_shape:
        features *= size
    if len(input_shape) > 1:
        layers.append(Flatten())
    for hidden in widths:
        layers += [Linear(features, hidden), ReLU()]
        features = hidden
    layers.append(Linear(features, num_classes))
    return NetSpec(tuple(input_shape), tuple(layers), name=name)


def network(arch: str, dataset: str = "mnist") -> NetSpec:
    """Build a named architecture for a named dataset, e.g. ``network("cnn3", "cifar10")``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    input_shape, num_classes, normalize = DATASETS[dataset]
    if arch.startswith("fc-"):
        widths = [int(w) for w in arch[3:].split("x") if w]
        return fully_connected(input_shape, widths, num_classes, name=f"{arch}-{dataset}")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)} or 'fc-WxW'")
    convs, dense = ARCHITECTURES[arch]
    return build_cnn(f"{arch}-{dataset}", input_shape, num_classes, convs, dense, normalize)

