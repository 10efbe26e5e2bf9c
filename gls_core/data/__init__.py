"""Dataset readers in their standard published file formats."""

from .idx import read_idx
from .mnist import data_dir, load_mnist

__all__ = ["data_dir", "load_mnist", "read_idx"]
