"""Dataset readers in their standard published file formats, augmentation and deterministic batching.

``load_dataset(name, split)`` returns a ``Dataset`` (float32 images in [0, 1], int64 labels) for
mnist, fashion-mnist, cifar10, tinyimagenet, digits, or a user's .npz / .safetensors file.
"""

from .augment import NO_AUGMENTATION, Augmentation
from .batching import batch_generator, derive_seed, epoch_batches, epoch_permutation
from .dataset import Dataset
from .idx import read_idx
from .mnist import load_mnist
from .paths import DATA_DIR_ENV, data_dir
from .registry import DATASET_NAMES, SPLITS, TRAIN_SIZES, default_augmentation, load_dataset

__all__ = [
    "DATASET_NAMES", "DATA_DIR_ENV", "NO_AUGMENTATION", "SPLITS", "TRAIN_SIZES", "Augmentation", "Dataset",
    "batch_generator", "data_dir", "default_augmentation", "derive_seed", "epoch_batches", "epoch_permutation",
    "load_dataset", "load_mnist", "read_idx",
]
