"""Augmentation (App. E.5 crop and flip) and deterministic minibatching."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gls_core.data import (
    Augmentation,
    Dataset,
    batch_generator,
    derive_seed,
    epoch_batches,
    epoch_permutation,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference(aug: Augmentation, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image loop in torchvision's order (pad, crop, then flip), from the same draws as ``apply``."""
    n, _, h, w = x.shape
    top = torch.randint(0, 2 * aug.pad + 1, (n,), generator=gen)
    left = torch.randint(0, 2 * aug.pad + 1, (n,), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5 if aug.flip else torch.zeros(n, dtype=torch.bool)
    out = []
    for i in range(n):
        padded = F.pad(x[i], (aug.pad,) * 4)
        crop = padded[:, int(top[i]) : int(top[i]) + h, int(left[i]) : int(left[i]) + w]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("aug", [Augmentation(2, True), Augmentation(4, True), Augmentation(3, False),
                                 Augmentation(0, True)])
def test_matches_the_per_image_reference(aug: Augmentation) -> None:
    x = torch.rand(50, 3, 9, 11)
    out = aug.apply(x, generator(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, reference(aug, x, generator(5)))


def test_deterministic_per_generator_and_per_image() -> None:
    aug = Augmentation(2, True)
    x = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()  # 64 copies of one image
    first, again, other = aug.apply(x, generator(1)), aug.apply(x, generator(1)), aug.apply(x, generator(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    distinct = {tuple(image.flatten().tolist()) for image in first}
    assert len(distinct) > 20  # each image draws its own offset and flip (50 combinations)
    assert Augmentation().is_identity and Augmentation().apply(x, generator()) is x


def test_flip_flips_some_images() -> None:
    x = torch.rand(64, 1, 6, 6)
    out = Augmentation(0, True).apply(x, generator(3))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped ^ kept).all()) and 10 < int(flipped.sum()) < 54


def test_crop_shifts_content_and_pads_with_zeros() -> None:
    x = torch.rand(64, 3, 32, 32) * 0.5 + 0.5  # no zeros in the images themselves
    out = Augmentation(2, False).apply(x, generator(4))
    shifts = set()
    for o, i in zip(out, x):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(o, F.pad(i, (2, 2, 2, 2))[:, 2 + dy : 34 + dy, 2 + dx : 34 + dx])]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10
    assert bool((out[:, :, 2:30, 2:30] >= 0.5).all())  # the centre is never padding
    assert bool(((out == 0) | (out >= 0.5)).all())  # anything else that appears is a zero-padded pixel
    assert bool((out == 0).any())  # padding appears where an offset is non-zero
    ones = Augmentation(4, True).apply(torch.ones(16, 3, 64, 64), generator(0))
    assert set(ones.unique().tolist()) == {0.0, 1.0}  # zero padding in [0, 1] pixel space


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="pad must be >= 0"):
        Augmentation(-1)
    with pytest.raises(ValueError, match="N x C x H x W"):
        Augmentation(2, True).apply(torch.rand(3, 32, 32), generator())
    assert Augmentation(2, True).apply(torch.rand(0, 3, 8, 8), generator()).shape == (0, 3, 8, 8)


def test_dataset_batch_applies_its_augmentation() -> None:
    d = Dataset("toy", torch.rand(10, 3, 8, 8), torch.arange(10), 10, Augmentation(2, True))
    idx = torch.tensor([3, 1, 4])
    x, y = d.batch(idx)
    assert torch.equal(x, d.x[idx]) and y.tolist() == [3, 1, 4]
    xa, _ = d.batch(idx, batch_generator(0, 0, 0))
    assert torch.equal(xa, d.augmentation.apply(d.x[idx], batch_generator(0, 0, 0)))
    assert repr(d) == ("Dataset('toy', 10 x (3, 8, 8), num_classes=10, "
                       "augmentation=Augmentation(pad=2, flip=True), source='')")
    with pytest.raises(ValueError, match="labels must lie in"):
        Dataset("toy", torch.rand(2, 1, 2, 2), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="float32"):
        Dataset("toy", torch.rand(2, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1]), 3)


# ---------------------------------------------------------------- minibatches

def test_epoch_batches_cover_every_index_once() -> None:
    batches = epoch_batches(103, 10, seed=7, epoch=2)
    assert [len(b) for b in batches] == [10] * 10 + [3] and all(b.dtype == torch.int64 for b in batches)
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(103))
    dropped = epoch_batches(103, 10, seed=7, epoch=2, drop_last=True)
    assert len(dropped) == 10 and all(torch.equal(a, b) for a, b in zip(dropped, batches))
    assert len(epoch_batches(100, 10, 7, 2, drop_last=True)) == 10
    assert epoch_batches(0, 4, 0, 0) == [] and epoch_batches(3, 4, 0, 0, drop_last=True) == []
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(10, 0, 0, 0)


def test_epoch_batches_are_regenerable_and_vary() -> None:
    a, b = epoch_batches(1000, 64, seed=3, epoch=5), epoch_batches(1000, 64, seed=3, epoch=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(epoch_batches(1000, 64, seed=3, epoch=6)))
    assert not torch.equal(torch.cat(a), torch.cat(epoch_batches(1000, 64, seed=4, epoch=5)))
    assert torch.equal(torch.cat(a), epoch_permutation(1000, 3, 5))
    # Resuming mid-epoch: regenerate and skip the batches already done.
    assert torch.equal(epoch_batches(1000, 64, 3, 5)[7], a[7])
    first = batch_generator(3, 5, 7)
    draw = torch.rand(4, generator=first)
    assert torch.equal(draw, torch.rand(4, generator=batch_generator(3, 5, 7)))
    assert not torch.equal(draw, torch.rand(4, generator=batch_generator(3, 5, 8)))


def test_seeds_are_the_same_in_every_process() -> None:
    """Pinned values, and a fresh interpreter with another hash salt regenerating the same batches."""
    assert derive_seed("gls-epoch", 0, 0) == 2876029886310326543  # SHA-256 based: fixed forever
    assert [b.tolist() for b in epoch_batches(10, 4, 0, 0)] == [[3, 2, 8, 9], [1, 7, 4, 6], [5, 0]]  # torch pinned
    expression = ("torch.cat(epoch_batches(50, 8, 11, 3)).tolist(), "
                  "torch.rand(3, generator=batch_generator(11, 3, 2)).tolist()")
    code = f"from gls_core.data import epoch_batches, batch_generator; import torch; print(repr(({expression})))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert output.strip() == repr(eval(expression))
