"""The one in-memory form every loader returns, whatever the file format it was read from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .augment import NO_AUGMENTATION, Augmentation


def first_index(mask: torch.Tensor) -> int:
    """The index of the first True of a 1-D mask that has one."""
    return int(mask.nonzero()[0, 0])


def label_problem(y: torch.Tensor, num_classes: int) -> str | None:
    """The first label outside 0..num_classes-1 with its index (what to look up in the file), or None."""
    bad = (y < 0) | (y >= num_classes)
    if not bool(bad.any()):
        return None
    index = first_index(bad)
    count = int(bad.sum())
    return (f"the first label outside 0..{num_classes - 1} is {int(y[index])} at index {index}"
            + (f", {count} in all" if count > 1 else ""))


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Images ``x`` float32 [N, C, H, W] in [0, 1] and labels ``y`` int64 [N] in [0, num_classes).

    Pixels stay un-normalised: colour networks carry their own fixed Normalize layer, and
    certification regions (L_inf balls intersected with [0, 1]) live in pixel space.
    ``augmentation`` is the dataset's default training augmentation; ``source`` records which
    files were read (e.g. to tell the CIFAR-10 test subset from the full set in a run's log).
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    augmentation: Augmentation = NO_AUGMENTATION
    source: str = ""

    def __post_init__(self) -> None:
        if self.x.dtype != torch.float32 or self.x.dim() != 4:
            raise ValueError(f"{self.name}: x must be float32 N x C x H x W, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1 or len(self.y) != len(self.x):
            raise ValueError(f"{self.name}: y must be int64 [{len(self.x)}], got {self.y.dtype} {tuple(self.y.shape)}")
        problem = label_problem(self.y, self.num_classes)
        if problem:
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes}): {problem}")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:  # the tensors themselves would flood logs and error messages
        return (f"Dataset({self.name!r}, {len(self)} x {self.shape}, num_classes={self.num_classes}, "
                f"augmentation={self.augmentation}, source={self.source!r})")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one input, C x H x W (what ``gls_core.nets.zoo.DATASETS`` lists)."""
        c, h, w = self.x.shape[1:]
        return (c, h, w)

    def check_fits(self, model: str, input_shape: Sequence[int], outputs: int) -> None:
        """ValueError naming both shapes unless network ``model`` (its input shape, its outputs) can take this data."""
        expected = tuple(input_shape)
        data = self.source if self.name == "file" and self.source else self.name  # a user's file by its path
        if expected != self.shape:
            raise ValueError(f"{model} takes inputs of shape {expected}, but the images of {data} have shape "
                             f"{self.shape}")
        if self.num_classes > outputs:
            raise ValueError(f"{model} has {outputs} outputs, but {data} has {self.num_classes} classes")

    def batch(self, indices: torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` at ``indices``, augmented with the default augmentation when a generator is given."""
        x, y = self.x[indices], self.y[indices]
        if generator is not None:
            x = self.augmentation.apply(x, generator)
        return x, y


def from_uint8(name: str, x: np.ndarray, y: np.ndarray, num_classes: int,
               augmentation: Augmentation = NO_AUGMENTATION, source: str = "") -> Dataset:
    """Build a Dataset from uint8 pixels (divided by 255) and integer labels, as most formats store them."""
    images = torch.from_numpy(x.astype(np.float32, order="C")).div_(255)  # one copy, also of read-only buffers
    labels = torch.from_numpy(np.asarray(y).astype(np.int64))
    return Dataset(name, images, labels, num_classes, augmentation, source)
