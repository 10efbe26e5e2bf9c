"""Network specs: parameter counts, the flat layout, conversion to and from nn.Sequential, errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import random_inputs, random_population
from torch import nn

import gls_core
from gls_core.nets import Conv2d, Flatten, InputNormalization, Linear, NetSpec, Normalize, ReLU, fully_connected
from gls_core.nets.zoo import build_cnn

CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@pytest.mark.parametrize(("arch", "dataset", "count"), [
    ("cnn3-tiny", "mnist", 1_108),
    ("cnn3", "mnist", 5_170),
    ("cnn3", "cifar10", 6_770),
    ("cnn5", "mnist", 165_850),
    ("cnn5", "cifar10", 281_338),
    ("cnn5", "tinyimagenet", 1_165_240),
    ("cnn5-l", "cifar10", 1_255_882),
    ("cnn7", "mnist", 13_257_290),
    ("cnn7", "cifar10", 17_190_602),
])
def test_parameter_counts(arch: str, dataset: str, count: int) -> None:
    spec = gls_core.network(arch, dataset)
    assert spec.num_params == count
    # The spec's count is the module's: the same layers hold the same parameters.
    if count < 2_000_000:
        module = gls_core.to_sequential(spec)
        assert sum(p.numel() for p in module.parameters()) == count


def test_dataset_shapes_and_normalisation() -> None:
    cifar = gls_core.network("cnn3", "cifar10")
    assert cifar.input_shape == (3, 32, 32) and cifar.output_shape == (10,)
    assert cifar.layers[0] == Normalize(*CIFAR)
    mnist = gls_core.network("cnn3", "mnist")
    assert mnist.input_shape == (1, 28, 28) and not isinstance(mnist.layers[0], Normalize)
    assert gls_core.network("cnn5", "tinyimagenet").output_shape == (200,)
    assert gls_core.network("cnn3-tiny", "digits").input_shape == (1, 8, 8)


def test_fully_connected_names() -> None:
    spec = gls_core.network("fc-20x10", "mnist")
    assert spec.layers == (Flatten(), Linear(784, 20), ReLU(), Linear(20, 10), ReLU(), Linear(10, 10))
    assert spec.num_params == 784 * 20 + 20 + 20 * 10 + 10 + 10 * 10 + 10
    flat = fully_connected((3,), [4], 2)
    assert flat.layers == (Linear(3, 4), ReLU(), Linear(4, 2))


SPECS = {
    "mlp": fully_connected((5,), [7, 4], 3),
    "image-mlp": fully_connected((1, 3, 4), [6], 3),
    "cnn": build_cnn("cnn", (2, 7, 7), 3, [(3, 3, 2, 1), (4, 2, 1, 0)], [5]),
    "cifar-like": build_cnn("cifar-like", (3, 6, 6), 4, [(2, 3, 1, 1), (3, 4, 2, 1)], [], normalize=CIFAR),
    "cnn3-tiny": gls_core.network("cnn3-tiny", "mnist"),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_flat_layout_is_parameters_to_vector_order(name: str) -> None:
    spec = SPECS[name]
    module = gls_core.to_sequential(spec)  # PyTorch's own initialisation
    theta = nn.utils.parameters_to_vector(module.parameters())
    assert theta.shape == (spec.num_params,)
    population = theta.unsqueeze(0)
    affine = [i for i, layer in enumerate(spec.layers) if isinstance(layer, (Conv2d, Linear))]
    for index in affine:
        assert torch.equal(spec.weight(population, index)[0], module[index].weight)
        assert torch.equal(spec.bias(population, index)[0], module[index].bias)
    # ... and to_sequential(spec, theta) puts every parameter back where it came from.
    rebuilt = gls_core.to_sequential(spec, theta)
    for a, b in zip(module.parameters(), rebuilt.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(SPECS))
def test_round_trip_through_sequential(name: str) -> None:
    spec = SPECS[name]
    theta = gls_core.kaiming_uniform(spec, torch.Generator().manual_seed(0))
    module = gls_core.to_sequential(spec, theta)
    back_spec, back_theta = gls_core.from_sequential(module, spec.input_shape)
    assert back_spec.layers == spec.layers
    assert back_spec.input_shape == spec.input_shape
    assert back_spec.num_params == spec.num_params
    assert torch.equal(back_theta, theta)


@pytest.mark.parametrize("name", list(SPECS))
def test_population_forward_matches_each_member(name: str) -> None:
    spec = SPECS[name]
    generator = torch.Generator().manual_seed(1)
    params = random_population(spec, 4, generator)
    x = random_inputs(spec, 5, generator)
    logits = gls_core.forward(spec, params, x)
    assert logits.shape == (4, 5, spec.num_outputs)
    for p in range(4):
        expected = gls_core.to_sequential(spec, params[p])(x)
        torch.testing.assert_close(logits[p], expected, rtol=1e-5, atol=1e-5)
    # A single D vector is a population of one.
    torch.testing.assert_close(gls_core.forward(spec, params[2], x), logits[2:3], rtol=1e-6, atol=1e-6)


def test_kaiming_uniform_matches_pytorch_ranges() -> None:
    spec = SPECS["cnn"]
    theta = gls_core.kaiming_uniform(spec, torch.Generator().manual_seed(0))
    population = theta.unsqueeze(0)
    for index, slot in enumerate(spec.slots):
        if slot is None:
            continue
        fan_in = 1
        for size in slot.weight_shape[1:]:
            fan_in *= size
        bound = fan_in ** -0.5  # kaiming_uniform(a=sqrt(5)) and the bias both give 1/sqrt(fan_in)
        weight, bias = spec.weight(population, index), spec.bias(population, index)
        assert weight.abs().max() <= bound and bias.abs().max() <= bound
        assert weight.std() > bound / 4  # really drawn, not zeros
    again = gls_core.kaiming_uniform(spec, torch.Generator().manual_seed(0))
    assert torch.equal(theta, again)
    assert not torch.equal(theta, gls_core.kaiming_uniform(spec, torch.Generator().manual_seed(1)))


def _batchnorm_net(generator: torch.Generator) -> nn.Sequential:
    net = nn.Sequential(
        InputNormalization(*CIFAR),
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=1, padding=0, bias=False), nn.BatchNorm2d(5, affine=False), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 6), nn.BatchNorm1d(6), nn.ReLU(),
        nn.Linear(6, 3),
    )
    with torch.no_grad():
        for module in net:
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator))
                module.running_var.copy_(torch.rand(size, generator=generator) * 2 + 0.1)
                if module.affine:
                    module.weight.copy_(torch.randn(size, generator=generator))
                    module.bias.copy_(torch.randn(size, generator=generator))
    return net.eval()


def test_batchnorm_is_folded() -> None:
    generator = torch.Generator().manual_seed(2)
    net = _batchnorm_net(generator)
    x = torch.rand(6, 3, 8, 8, generator=generator)
    spec, theta = gls_core.from_sequential(net, (3, 8, 8))
    assert not any(isinstance(layer, nn.Module) for layer in spec.layers)
    assert [type(layer) for layer in spec.layers] == [Normalize, Conv2d, ReLU, Conv2d, ReLU, Flatten, Linear, ReLU,
                                                      Linear]
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(gls_core.forward(spec, theta, x)[0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gls_core.to_sequential(spec, theta)(x), expected, rtol=1e-5, atol=1e-5)
    # Bounds of the Sequential (BatchNorm folded inside compute_bounds) are those of the folded spec.
    lower, upper = gls_core.compute_bounds(net, x, 0.0, "deeppoly")
    torch.testing.assert_close(lower, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(upper, expected, rtol=1e-4, atol=1e-4)


def test_batchnorm_errors() -> None:
    stray = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    with pytest.raises(ValueError, match="BatchNorm"):
        gls_core.from_sequential(stray, (3,))
    no_stats = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.ReLU(),
                             nn.Linear(3, 2))
    with pytest.raises(ValueError, match="running statistics"):
        gls_core.from_sequential(no_stats, (3,))
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with pytest.raises(ValueError, match="BatchNorm"):
        gls_core.compute_bounds(net, torch.rand(1, 3), 0.1, "ibp", params=torch.zeros(2, 26))


def test_unsupported_modules_are_refused() -> None:
    with pytest.raises(ValueError, match="Tanh"):
        gls_core.from_sequential(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)), (3,))
    with pytest.raises(ValueError, match="convolutions"):
        gls_core.from_sequential(nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.Flatten(), nn.Linear(2, 2)),
                                 (1, 5, 5))
    with pytest.raises(ValueError, match="convolutions"):
        gls_core.from_sequential(nn.Sequential(nn.Conv2d(1, 2, (3, 2)), nn.Flatten(), nn.Linear(12, 2)), (1, 5, 5))


def test_biasless_layers_get_zero_bias() -> None:
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    spec, theta = gls_core.from_sequential(net, (3,))
    assert spec.num_params == 3 * 4 + 4 + 4 * 2 + 2
    assert torch.equal(spec.bias(theta.unsqueeze(0), 0)[0], torch.zeros(4))
    x = torch.rand(5, 3)
    torch.testing.assert_close(gls_core.forward(spec, theta, x)[0], net(x), rtol=1e-6, atol=1e-6)


def test_weight_and_bias_are_views_of_theta() -> None:
    spec = SPECS["cnn"]
    theta = random_population(spec, 3, torch.Generator().manual_seed(3))
    index = 2  # the second Conv2d
    weight, bias = spec.weight(theta, index), spec.bias(theta, index)
    assert weight.shape == (3, 4, 3, 2, 2) and bias.shape == (3, 4)
    assert weight.untyped_storage().data_ptr() == theta.untyped_storage().data_ptr()
    assert bias.untyped_storage().data_ptr() == theta.untyped_storage().data_ptr()
    weight[1, 0, 0, 0, 0] = 123.0
    bias[2, 3] = -7.0
    slot = spec.slots[index]
    assert slot is not None
    assert theta[1, slot.weight_offset] == 123.0
    assert theta[2, slot.bias_offset + 3] == -7.0
    # Writes through the view reach the module built from the vector.
    assert gls_core.to_sequential(spec, theta[1])[index].weight[0, 0, 0, 0] == 123.0


def test_weight_of_layer_without_parameters() -> None:
    spec = SPECS["mlp"]
    with pytest.raises(ValueError, match="layer 1"):
        spec.weight(torch.zeros(1, spec.num_params), 1)


@pytest.mark.parametrize(("input_shape", "layers", "error", "match"), [
    ((1, 5, 5), (Conv2d(2, 3, 3), Flatten(), Linear(27, 2)), ValueError, "layer 0: Conv2d expects 2 channels"),
    ((4,), (Linear(3, 2),), ValueError, r"layer 0: Linear expects \(3,\)"),
    ((1, 5, 5), (Linear(25, 2),), ValueError, "layer 0: Linear"),
    ((3,), (Normalize((0.5,), (0.2,)), Linear(3, 2)), ValueError, "layer 0: Normalize"),
    ((2, 4, 4), (Normalize((0.5,), (0.2,)), Flatten(), Linear(32, 2)), ValueError, "layer 0: Normalize"),
    ((1, 4, 4), (Normalize((0.5,), (0.0,)), Flatten(), Linear(16, 2)), ValueError, "std must be at least"),
    ((1, 4, 4), (Normalize((0.5,), (1e-45,)), Flatten(), Linear(16, 2)), ValueError, "std must be at least"),
    ((1, 4, 4), (Normalize((math.nan,), (1.0,)), Flatten(), Linear(16, 2)), ValueError, "must be finite"),
    ((1, 3, 3), (Conv2d(1, 2, 5), Flatten(), Linear(2, 2)), ValueError, "output is empty"),
    ((3,), (ReLU(),), ValueError, "at least one Conv2d or Linear"),
    ((3,), (Linear(3, 2), "relu"), TypeError, "layer 1: unsupported layer"),
])
def test_invalid_specs(input_shape: tuple[int, ...], layers: tuple[object, ...], error: type[Exception],
                       match: str) -> None:
    with pytest.raises(error, match=match):
        NetSpec(input_shape, layers)  # type: ignore[arg-type]


def test_invalid_populations() -> None:
    spec = SPECS["mlp"]
    D = spec.num_params
    x = torch.rand(2, 5)
    with pytest.raises(ValueError, match=rf"params: must have shape \[P, {D}\] or \[{D}\] .*got \[2, {D + 1}\]"):
        gls_core.forward(spec, torch.zeros(2, D + 1), x)
    with pytest.raises(ValueError, match="params: must have shape"):
        gls_core.forward(spec, torch.zeros(2, 1, D), x)
    with pytest.raises(ValueError, match="floating point"):
        gls_core.forward(spec, torch.zeros(2, D, dtype=torch.int64), x)
    with pytest.raises(ValueError, match="NaN or inf"):
        gls_core.forward(spec, torch.full((2, D), float("nan")), x)
    with pytest.raises(TypeError, match="params must be a torch.Tensor"):
        gls_core.forward(spec, [0.0] * D, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"theta must have shape \({D},\)"):
        gls_core.to_sequential(spec, torch.zeros(D - 1))


def test_unknown_architecture_and_dataset() -> None:
    with pytest.raises(ValueError, match="cnn4"):
        gls_core.network("cnn4", "mnist")
    with pytest.raises(ValueError, match="svhn"):
        gls_core.network("cnn3", "svhn")


def test_nets_import_nothing_from_the_relaxations() -> None:
    """Layers are nets/' own (shapes, forward pass, conversions): nothing in nets/ reaches up into bounds/."""
    import ast
    from pathlib import Path

    folder = Path(gls_core.__file__).parent / "nets"
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert not target.startswith(("..bounds", "..population", "gls_core.bounds")), (path.name, target)
    rules = Path(gls_core.__file__).parent / "bounds" / "rules.py"
    assert "def _conv_forward" not in rules.read_text()  # the forward column is nets.forward.FORWARD
