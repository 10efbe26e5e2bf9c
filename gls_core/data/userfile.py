"""A user's own data as ``.npz`` or ``.safetensors`` holding ``x`` (N x C x H x W) and ``y`` (labels).

Both formats load without executing code (``allow_pickle=False``; safetensors is plain tensors).
Every malformed input is refused with a ValueError that names the file and the problem, because a
silently misread dataset (channels last, 0..255 floats, labels from 1) would train and certify the
wrong thing without any visible failure.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .dataset import first_index, label_problem

KEYS = ("x", "y")
SUFFIXES = (".npz", ".safetensors")
NPY_MAGIC = b"\x93NUMPY"


def _check_npz(path: Path) -> None:
    """An .npz is a zip of .npy arrays; anything else would reach numpy's pickle fallback and its misleading message."""
    if zipfile.is_zipfile(path):
        return
    with path.open("rb") as file:
        head = file.read(6)
    what = "a single .npy array" if head == NPY_MAGIC else "not a zip archive"
    raise ValueError(f"{path}: cannot read it as .npz: it is {what}; an .npz is the zip of named arrays that "
                     "numpy.savez(path, x=..., y=...) writes")


def _read_arrays(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ``x`` and ``y`` arrays that are present, and the names of everything in the file."""
    if path.suffix == ".npz":
        _check_npz(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                return {key: torch.from_numpy(archive[key]) for key in KEYS if key in names}, names
        with safe_open(str(path), framework="pt") as tensors:
            names = list(tensors.keys())
            return {key: tensors.get_tensor(key) for key in KEYS if key in names}, names
    except (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, SafetensorError) as error:
        raise ValueError(f"{path}: cannot read it as {path.suffix} ({error})") from error


def _pixels(path: Path, x: torch.Tensor, as_float: bool = True) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"{path}: 'x' must be 4-D (N x C x H x W), got {x.dim()}-D shape {tuple(x.shape)}")
    if 0 in x.shape[1:]:
        raise ValueError(f"{path}: 'x' has shape {tuple(x.shape)}, with a zero-sized dimension; every example "
                         "needs C x H x W > 0 values")
    if x.shape[1] > 4 and x.shape[3] in (1, 3, 4):
        raise ValueError(f"{path}: 'x' has shape {tuple(x.shape)}, which looks channels-last (N x H x W x C); "
                         "store N x C x H x W")
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255) if as_float else x
    if not x.is_floating_point():
        raise ValueError(f"{path}: 'x' must be uint8 (0..255) or floating point in [0, 1], got {x.dtype}")
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{path}: 'x' contains NaN values")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(f"{path}: float 'x' must lie in [0, 1], found values in [{float(x.min())}, "
                         f"{float(x.max())}] (store uint8 for 0..255 pixels)")
    return x.to(torch.float32)


def _labels(path: Path, y: torch.Tensor, n: int, num_classes: int | None) -> tuple[torch.Tensor, int]:
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{path}: 'y' must hold integer labels, got {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"{path}: 'y' must be 1-D (N labels), got shape {tuple(y.shape)}")
    if len(y) != n:
        raise ValueError(f"{path}: 'x' has {n} examples but 'y' has {len(y)} labels")
    if y.dtype == torch.uint64 and bool((y.view(torch.int64) < 0).any()):
        first = first_index(y.view(torch.int64) < 0)
        raise ValueError(f"{path}: 'y' has label {int(y.view(torch.int64)[first]) + 2**64} at index {first}, beyond "
                         "the int64 range; labels must be 0..num_classes-1")
    y = y.to(torch.int64)
    if int(y.min()) < 0:
        first = first_index(y < 0)
        raise ValueError(f"{path}: 'y' has negative labels (min {int(y.min())}); the first is {int(y[first])} at "
                         f"index {first}; labels must be 0..num_classes-1")
    top = int(y.max())
    if num_classes is None:
        return y, top + 1
    if num_classes < 1 or top >= num_classes:
        raise ValueError(f"{path}: 'y' has label {top}, which needs more than num_classes={num_classes} classes "
                         f"({label_problem(y, num_classes)})")
    return y, num_classes


def read_user_file(path: str | Path, num_classes: int | None = None, *,
                   as_float: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """float32 images [N, C, H, W] in [0, 1], int64 labels [N] and the number of classes from a user file.

    ``num_classes`` defaults to the largest label + 1; when given, every label is checked against it.
    With ``as_float=False`` uint8 images stay uint8 (0..255, a quarter of the memory) for a caller that
    stores them as they are; float images are float32 either way.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    arrays, names = _read_arrays(path)
    for key in KEYS:
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (the file holds {', '.join(sorted(names)) or 'nothing'})")
    x = _pixels(path, arrays["x"], as_float)
    if len(x) == 0:
        raise ValueError(f"{path}: 'x' holds no examples")
    y, classes = _labels(path, arrays["y"], len(x), num_classes)
    return x.contiguous(), y.contiguous(), classes
