"""Training-time augmentation of App. E.5: random crop after zero padding, and random horizontal flip.

Applied to a whole batch at once with one gather (no loop over images), each image drawing its own
offset and flip from the given generator, so a step's augmentation is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    """Pad each side by ``pad`` zero pixels, crop back to the input size at a random offset, maybe flip.

    Padding is zeros in pixel space [0, 1] (black), as torchvision's RandomCrop does on un-normalised
    images; the networks normalise afterwards. ``Augmentation()`` is the identity.
    """

    pad: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")

    @property
    def is_identity(self) -> bool:
        return self.pad == 0 and not self.flip

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch ``x`` [N, C, H, W]; the same generator state gives the same result."""
        if x.dim() != 4:
            raise ValueError(f"augmentation expects a batch N x C x H x W, got shape {tuple(x.shape)}")
        if self.is_identity or x.shape[0] == 0:
            return x
        n, _, height, width = x.shape
        p = self.pad
        # Draws happen on the generator's device, always in the same order: row offsets, column offsets, flips.
        top = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=generator.device).to(x.device)
        left = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=generator.device).to(x.device)
        rows = top[:, None] + torch.arange(height, device=x.device)  # N x H, in padded coordinates
        cols = torch.arange(width, device=x.device).expand(n, width)
        if self.flip:
            flipped = torch.rand(n, generator=generator, device=generator.device).to(x.device) < 0.5
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        cols = left[:, None] + cols  # N x W
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


NO_AUGMENTATION = Augmentation()
