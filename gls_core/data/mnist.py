"""MNIST and Fashion-MNIST from their original IDX files in ``<data_dir>/<name>/*-idx?-ubyte[.gz]``.

Fashion-MNIST uses the same four file names; when the data directory lacks them, the copy that the
Debian package ``dataset-fashion-mnist`` installs in /usr/share/datasets/fashion-mnist is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .download import fetch
from .idx import read_idx
from .paths import DATA_DIR_ENV, data_dir, find_all, find_file, missing_error

__all__ = ["DATA_DIR_ENV", "IDX_FILES", "SYSTEM_DIRS", "data_dir", "load_mnist", "read_idx_split"]

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Read-only system copies, tried after the data directory and before any download.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}


def read_idx_split(name: str, split: str, root: str | Path | None = None, download: bool = False,
                   limit: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 images [N, 1, 28, 28], labels [N] and the image file's path for one split of an IDX dataset."""
    names = IDX_FILES[split]
    folder = data_dir(root) / name
    paths = find_all([folder, *SYSTEM_DIRS.get(name, ())], names)
    reason = "Downloading is off (download=False)."
    if paths is None and download:
        try:
            for stem in names:
                if find_file(folder, stem) is None:
                    fetch(name, f"{stem}.gz", folder)
            paths = find_all([folder], names)
        except OSError as error:
            reason = f"Downloading them failed: {error}"
    if paths is None:
        extra = "".join(f" Also looked in {system}." for system in SYSTEM_DIRS.get(name, ()))
        raise missing_error(name, data_dir(root), name, [f"{stem}[.gz]" for stem in names], reason + extra)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{paths[0].parent}: inconsistent {name} files (images {images.dtype} {images.shape}, "
                         f"labels {labels.shape})")
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"{paths[1]}: labels must be 0..9, found {int(labels.max())} (the first above 9 is at "
                         f"index {int(np.argmax(labels > 9))})")
    return images[:limit, None], labels[:limit], str(paths[0])


def load_mnist(split: str = "test", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 [N, 1, 28, 28] in [0, 1] and labels as int64 [N] (no download; see load_dataset)."""
    if split not in IDX_FILES:
        raise ValueError(f"split must be one of {sorted(IDX_FILES)}, got {split!r}")
    images, labels, _ = read_idx_split("mnist", split, root)
    return torch.from_numpy(images.astype(np.float32)).div_(255), torch.from_numpy(labels.astype(np.int64))
