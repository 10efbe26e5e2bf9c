"""MNIST from a data directory in its original layout (``<data_dir>/mnist/*-idx?-ubyte[.gz]``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .idx import read_idx

DATA_DIR_ENV = "GLS_DATA_DIR"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_dir(override: str | Path | None = None) -> Path:
    """The one data directory every loader reads: the argument, else $GLS_DATA_DIR, else ~/.cache/gls/data."""
    if override is not None:
        return Path(override)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return Path.home() / ".cache" / "gls" / "data"


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {folder}; put the four IDX files there "
        f"or set ${DATA_DIR_ENV} to a directory containing mnist/")


def load_mnist(split: str = "test", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 [N, 1, 28, 28] in [0, 1] and labels as int64 [N]."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    folder = data_dir(root) / "mnist"
    images = read_idx(_find(folder, _FILES[split][0]))
    labels = read_idx(_find(folder, _FILES[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: inconsistent MNIST files (images {images.shape}, labels {labels.shape})")
    x = torch.from_numpy(images.copy()).to(torch.float32).div_(255).unsqueeze(1)
    return x, torch.from_numpy(labels.astype("int64"))
