"""``load_dataset``: every dataset by name, in one form (``Dataset``), from one data directory.

The registry fixes each named dataset's input shape (matching ``gls_core.nets.zoo.DATASETS``) and
its default training augmentation (App. E.5: crop after 2-pixel padding and flip for CIFAR-10,
4-pixel padding for TinyImageNet, none for the grey datasets).
"""

from __future__ import annotations

from pathlib import Path

from ..catalog import TRAIN_SIZES as TRAIN_SIZES
from .augment import NO_AUGMENTATION, Augmentation
from .cifar import read_cifar10_split
from .dataset import Dataset, from_uint8
from .digits import read_digits_split
from .mnist import read_idx_split
from .tinyimagenet import read_tinyimagenet_split
from .userfile import read_user_file

DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10", "tinyimagenet", "digits", "file")
SPLITS = ("train", "test")
# Input shape C x H x W of each named dataset; a test keeps this equal to gls_core.nets.zoo.DATASETS.
SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "digits": (1, 8, 8),
    "cifar10": (3, 32, 32), "tinyimagenet": (3, 64, 64),
}
AUGMENTATIONS: dict[str, Augmentation] = {
    "cifar10": Augmentation(pad=2, flip=True),
    "tinyimagenet": Augmentation(pad=4, flip=True),
}


def default_augmentation(name: str) -> Augmentation:
    """The training augmentation of App. E.5 for a named dataset (the identity for grey ones and files)."""
    return AUGMENTATIONS.get(name, NO_AUGMENTATION)


def _read(name: str, split: str, root: str | Path | None, path: str | Path | None, download: bool,
          limit: int | None, num_classes: int | None) -> Dataset:
    augmentation = default_augmentation(name)
    if name in ("mnist", "fashion-mnist"):
        x, y, source = read_idx_split(name, split, root, download, limit)
        return from_uint8(name, x, y, 10, augmentation, source)
    if name == "cifar10":
        x, y, source = read_cifar10_split(split, root, download, limit)
        return from_uint8(name, x, y, 10, augmentation, source)
    if name == "tinyimagenet":
        x, y, classes, source = read_tinyimagenet_split(split, root, download, limit)
        return from_uint8(name, x, y, classes, augmentation, source)
    if name == "digits":
        images, labels = read_digits_split(split)
        return Dataset(name, images[:limit], labels[:limit], 10, augmentation, "sklearn.datasets.load_digits")
    assert path is not None
    images, labels, classes = read_user_file(path, num_classes)
    return Dataset(name, images[:limit], labels[:limit], classes, augmentation, str(path))


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, *, path: str | Path | None = None,
                 subset: int | None = None, download: bool = True, num_classes: int | None = None) -> Dataset:
    """Load ``split`` ("train" or "test") of a named dataset, or of a user file (``name="file"``, ``path=...``).

    Files are read from ``data_dir(root)/<name>/`` in the dataset's published format; missing ones
    are downloaded when ``download`` is set, else (or when offline) a FileNotFoundError names the
    directory and the files expected. ``subset=n`` keeps the first ``n`` examples. ``num_classes``
    is checked against the data (for a file, it is the label count to validate against).
    ``split`` does not apply to a file: it holds one split.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if (name == "file") != (path is not None):
        raise ValueError("name='file' needs path=... (an .npz or .safetensors file)" if path is None
                         else f"path= is only for name='file', not {name!r}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise ValueError(f"subset must be a positive integer, got {subset!r}")
    dataset = _read(name, split, root, path, download, subset, num_classes)
    if subset is not None and len(dataset) < subset:
        raise ValueError(f"subset={subset} asks for more than the {len(dataset)} examples of {name} {split}")
    if name in SHAPES and dataset.shape != SHAPES[name]:
        raise ValueError(f"{dataset.source}: {name} images should be {SHAPES[name]}, got {dataset.shape}")
    if num_classes is not None and dataset.num_classes != num_classes:
        raise ValueError(f"{name} has {dataset.num_classes} classes, not num_classes={num_classes}")
    return dataset
