"""Reproducible randomness: every random draw is keyed by (job seed, step, member, purpose).

Any process (the local trainer, a coordinator, a bound worker) regenerates exactly the same noise
from the key alone, so populations never have to travel over the network and a resumed or
re-dispatched step gives bit-identical results. Keys are mixed with a fixed hash (not Python's
salted ``hash``) into a torch generator seed.
"""

from __future__ import annotations

import torch

from ..data.batching import derive_seed


def generator(seed: int, purpose: str, *parts: int) -> torch.Generator:
    """A CPU generator for one purpose ("member", "attack", "augment", "init", ...) at one coordinate."""
    return torch.Generator().manual_seed(derive_seed(f"gls-{purpose}", seed, *parts))


def direction(seed: int, step: int, index: int, dim: int) -> torch.Tensor:
    """Standard normal direction z_index (D,) of one step; scaled by sigma it is a member's noise."""
    return torch.randn(dim, generator=generator(seed, "member", step, index))


def directions(seed: int, step: int, indices: range, dim: int) -> torch.Tensor:
    """Directions for a range of indices, [len(indices), D]; each row is independent of the range."""
    if len(indices) == 0:
        return torch.empty(0, dim)
    return torch.stack([direction(seed, step, i, dim) for i in indices])
