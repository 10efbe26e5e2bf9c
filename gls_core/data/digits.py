"""scikit-learn's 8x8 handwritten digits (1,797 images, values 0..16), split deterministically.

It ships inside scikit-learn, so it is the one real image dataset available with no files at all;
small enough for end-to-end training tests. The first 1,500 images are "train", the other 297 "test".
"""

from __future__ import annotations

import numpy as np
import torch

from ..catalog import DIGITS_TRAIN_SIZE as TRAIN_SIZE


def read_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 images [N, 1, 8, 8] in [0, 1] and int64 labels [N]."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a second to import

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32)).div_(16).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    part = slice(None, TRAIN_SIZE) if split == "train" else slice(TRAIN_SIZE, None)
    return x[part].contiguous(), y[part].contiguous()
