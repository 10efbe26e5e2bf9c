"""Deterministic minibatches and augmentation randomness, regenerable from (seed, epoch, step) alone.

Training resumes mid-epoch by regenerating an epoch's batches and skipping those already done, and
a coordinator process regenerates the same batches independently; so every stream is seeded from a
SHA-256 of its integer coordinates (Python's ``hash()`` is salted per process and unusable here).
The same torch version gives the same permutation on any CPU.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(tag: str, *parts: int) -> int:
    """A 63-bit seed from a purpose tag and integers, identical in every process and on every platform."""
    text = ":".join([tag, *(str(int(part)) for part in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits the ``n`` examples (int64 [n])."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    generator = torch.Generator().manual_seed(derive_seed("gls-epoch", seed, epoch))
    return torch.randperm(n, generator=generator)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = False) -> list[torch.Tensor]:
    """Index tensors of one epoch's minibatches: every index once (the last batch may be short unless dropped)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = list(epoch_permutation(n, seed, epoch).split(batch_size)) if n else []
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A fresh CPU generator for the augmentation (or other randomness) of one training step."""
    return torch.Generator().manual_seed(derive_seed("gls-step", seed, epoch, step))
