"""Architectures as specs with a flat parameter layout."""

from .convert import InputNormalization, from_sequential, kaiming_uniform, to_sequential
from .spec import Conv2d, Flatten, Linear, NetSpec, Normalize, ReLU
from .zoo import ARCHITECTURES, DATASETS, fully_connected, network

__all__ = [
    "ARCHITECTURES", "DATASETS", "Conv2d", "Flatten", "InputNormalization", "Linear", "NetSpec", "Normalize", "ReLU",
    "from_sequential", "fully_connected", "kaiming_uniform", "network", "to_sequential",
]
