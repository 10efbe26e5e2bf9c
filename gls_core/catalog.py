"""What a config and the command line name, as plain data: datasets, architectures, relaxations, defaults.

Nothing here imports torch, so validating a config (`gls train` and `gls config show` refuse a bad
one before anything else) and building the command line's help take a fraction of a second; the
modules that compute with these names import them from here (:mod:`gls_core.nets.zoo`,
:mod:`gls_core.data.registry`, :mod:`gls_core.evaluation`). The relaxations are their records'
(:mod:`gls_core.relaxations`, torch-free as well).
"""

from __future__ import annotations

from collections.abc import Sequence

from . import relaxations

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINYIMAGENET_STD = (0.2302, 0.2265, 0.2262)

# Input shape C x H x W, classes and the fixed normalisation (mean, std) of each named dataset.
DATASETS: dict[str, tuple[tuple[int, ...], int, tuple[tuple[float, ...], tuple[float, ...]] | None]] = {
    "mnist": ((1, 28, 28), 10, None),
    "fashion-mnist": ((1, 28, 28), 10, None),
    "digits": ((1, 8, 8), 10, None),
    "cifar10": ((3, 32, 32), 10, (CIFAR10_MEAN, CIFAR10_STD)),
    "tinyimagenet": ((3, 64, 64), 200, (TINYIMAGENET_MEAN, TINYIMAGENET_STD)),
}

# (out_channels, kernel, stride, padding) per convolution, then the hidden dense widths.
ConvPlan = Sequence[tuple[int, int, int, int]]
ARCHITECTURES: dict[str, tuple[ConvPlan, Sequence[int]]] = {
    "cnn3-tiny": ([(2, 5, 2, 2), (2, 4, 2, 1)], []),
    "cnn3": ([(8, 5, 2, 2), (8, 4, 2, 1)], []),
    "cnn5": ([(16, 5, 2, 2), (16, 4, 2, 1), (32, 4, 2, 1)], [512]),
    "cnn5-l": ([(64, 5, 2, 2), (64, 4, 2, 1), (128, 4, 2, 1)], [512]),
    "cnn7": ([(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)], [512]),
}

DIGITS_TRAIN_SIZE = 1500  # scikit-learn's digits: the first 1,500 images train, the other 297 test
# Examples in each named training split as published (a local copy, e.g. the CIFAR-10 subset, may hold
# fewer): enough for a config to know that a batch size leaves an epoch without a full batch.
TRAIN_SIZES: dict[str, int] = {
    "mnist": 60000, "fashion-mnist": 60000, "digits": DIGITS_TRAIN_SIZE, "cifar10": 50000, "tinyimagenet": 100000,
}

DEFAULT_BATCH_SIZE = 256
DEFAULT_PGD_STEPS = 50
DEFAULT_PGD_RESTARTS = 3
COMPLETE = "complete"
"""Certification by the complete verifier (branch and bound, ``gls_core.verify``) instead of a relaxation."""


def certify_methods() -> tuple[str, ...]:
    """What certifies: every relaxation (:mod:`gls_core.relaxations`), then the complete verifier."""
    return (*sorted(relaxations.names()), COMPLETE)


DEFAULT_COMPLETE_TIMEOUT = 30.0
