"""CIFAR-10 from the *binary* distribution (``cifar-10-batches-bin``), never the pickled Python one.

Each record is one label byte and 3,072 pixel bytes (R, G, B planes of 32x32, row-major), so the
files map straight onto N x 3 x 32 x 32 with no code execution on load (unpickling can run code).
The full set lives in ``<data_dir>/cifar10/cifar-10-batches-bin/``; when it is absent and the
real 4,000/1,000-image subset ``<data_dir>/cifar10_subset/`` exists, that is read instead.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

from .download import fetch_archive
from .paths import data_dir, find_all, missing_error

log = logging.getLogger(__name__)

FULL_DIR = "cifar10/cifar-10-batches-bin"
SUBSET_DIR = "cifar10_subset"
ARCHIVE = "cifar-10-binary.tar.gz"  # unpacks to cifar-10-batches-bin/
FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
SUBSET_FILES = {"train": ("data_batch_1_first4000.bin",), "test": ("test_batch_first1000.bin",)}
RECORD = 1 + 3 * 32 * 32


def read_cifar_bin(path: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 3, 32, 32] and labels [N] from one binary batch file (``.gz`` or raw)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) % RECORD:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)[:limit]
    labels = records[:, 0]
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"{path}: labels must be 0..9, found {int(labels.max())} (the first above 9 is record "
                         f"{int(np.argmax(labels > 9))}; not the CIFAR-10 binary format?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar10_split(split: str, root: str | Path | None = None, download: bool = False,
                       limit: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 images, labels and the folder read for one split: full set, else the subset, else a download."""
    base = data_dir(root)
    paths = find_all([base / FULL_DIR], FILES[split])
    if paths is None and not (base / FULL_DIR).is_dir():  # an incomplete full set is an error, not a fallback
        paths = find_all([base / SUBSET_DIR], SUBSET_FILES[split])
        if paths is not None:
            log.info("CIFAR-10: full set absent from %s, reading the subset in %s", base / FULL_DIR, base / SUBSET_DIR)
    reason = "Downloading is off (download=False)."
    if paths is None and download:
        try:
            fetch_archive("cifar10", ARCHIVE, base / "cifar10")
            paths = find_all([base / FULL_DIR], FILES[split])
            reason = f"The downloaded {ARCHIVE} lacked them."
        except OSError as error:
            reason = f"Downloading {ARCHIVE} failed: {error}"
    if paths is None:
        reason += f" (The subset {SUBSET_DIR}/ with {' and '.join(SUBSET_FILES[split])}[.gz] is also accepted.)"
        raise missing_error("cifar10", base, FULL_DIR, [f"{name}[.gz]" for name in FILES[split]], reason)
    images, labels = [], []
    remaining = limit
    for path in paths:
        x, y = read_cifar_bin(path, remaining)
        images.append(x)
        labels.append(y)
        if remaining is not None:
            remaining -= len(y)
            if remaining <= 0:
                break
    return np.concatenate(images), np.concatenate(labels), str(paths[0].parent)
