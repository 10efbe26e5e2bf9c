"""TinyImageNet from the standard ``tiny-imagenet-200/`` layout, JPEGs decoded with Pillow.

Layout: ``wnids.txt``; ``train/<wnid>/images/*.JPEG``; ``val/images/*.JPEG`` labelled by
``val/val_annotations.txt`` (file, wnid, box). The test images carry no labels, so the "test"
split is the validation set, as in the certified-training literature.

Class indices follow the sorted wnids (what torchvision's ImageFolder gives). Training images are
ordered round-robin over classes (image 0 of every class, then image 1, ...), so the first ``n``
examples, and thus ``subset=n``, cover all classes instead of the first few.
"""

from __future__ import annotations

from itertools import chain, zip_longest
from pathlib import Path

import numpy as np
from PIL import Image

from .download import fetch_archive
from .paths import data_dir, missing_error

FOLDER = "tinyimagenet/tiny-imagenet-200"
ARCHIVE = "tiny-imagenet-200.zip"  # unpacks to tiny-imagenet-200/
EXPECTED = {
    "train": ("wnids.txt", "train/<wnid>/images/*.JPEG"),
    "test": ("wnids.txt", "val/val_annotations.txt", "val/images/*.JPEG"),
}
SIZE = 64


def _wnids(folder: Path) -> list[str]:
    wnids = sorted({line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()})
    if not wnids:
        raise ValueError(f"{folder / 'wnids.txt'}: no class ids")
    return wnids


def _train_items(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    per_class = []
    for label, wnid in enumerate(wnids):
        images = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not images:
            raise ValueError(f"{folder / 'train' / wnid / 'images'}: no .JPEG images for class {wnid}")
        per_class.append([(path, label) for path in images])
    return [item for item in chain.from_iterable(zip_longest(*per_class)) if item is not None]


def _val_items(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    index = {wnid: label for label, wnid in enumerate(wnids)}
    annotations = folder / "val" / "val_annotations.txt"
    items = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(f"{annotations}:{number}: expected 'file<TAB>wnid...' with a wnid from wnids.txt")
        items.append((folder / "val" / "images" / fields[0], index[fields[1]]))
    return items


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))  # a few TinyImageNet images are greyscale
    if rgb.shape != (SIZE, SIZE, 3):
        raise ValueError(f"{path}: expected a {SIZE}x{SIZE} image, got {rgb.shape[1]}x{rgb.shape[0]}")
    return rgb.transpose(2, 0, 1)


def read_tinyimagenet_split(split: str, root: str | Path | None = None, download: bool = False,
                            limit: int | None = None) -> tuple[np.ndarray, np.ndarray, int, str]:
    """uint8 images [N, 3, 64, 64], labels [N], the number of classes and the folder read."""
    base = data_dir(root)
    folder = base / FOLDER
    needed = folder / ("train" if split == "train" else "val/val_annotations.txt")
    reason = "Downloading is off (download=False)."
    if not ((folder / "wnids.txt").is_file() and needed.exists()) and download:
        try:
            fetch_archive("tinyimagenet", ARCHIVE, base / "tinyimagenet")
            reason = f"The downloaded {ARCHIVE} lacked them."
        except OSError as error:
            reason = f"Downloading {ARCHIVE} failed: {error}"
    if not ((folder / "wnids.txt").is_file() and needed.exists()):
        raise missing_error("tinyimagenet", base, FOLDER, EXPECTED[split], reason)
    wnids = _wnids(folder)
    items = (_train_items if split == "train" else _val_items)(folder, wnids)[:limit]
    images = np.empty((len(items), 3, SIZE, SIZE), dtype=np.uint8)  # filled in place: 1.2 GB for the train set
    for i, (path, _) in enumerate(items):
        images[i] = _decode(path)
    labels = np.array([label for _, label in items], dtype=np.int64)
    return images, labels, len(wnids), str(folder)
