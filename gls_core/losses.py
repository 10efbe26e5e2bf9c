"""Standard and robust cross-entropy (Sec. 2.1), per member and per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def standard_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [P, B, classes] (or [B, classes]) against labels y [B]: [P, B] (or [B])."""
    flat = logits.reshape(-1, logits.shape[-1])
    labels = y.expand(*logits.shape[:-1]).reshape(-1)
    return F.cross_entropy(flat, labels, reduction="none").view(logits.shape[:-1])


def robust_loss(margin_upper: torch.Tensor) -> torch.Tensor:
    """L_CE of the upper bounds of y_i - y_t (i != t), [..., classes-1] -> [...].

    The target's own difference is 0, so L = log(1 + sum_i exp(u_i)).
    """
    zeros = torch.zeros_like(margin_upper[..., :1])
    return torch.logsumexp(torch.cat([zeros, margin_upper], dim=-1), dim=-1)


def certified(margin_upper: torch.Tensor) -> torch.Tensor:
    """True where every logit difference y_i - y_t is provably negative (robust for the region)."""
    return (margin_upper < 0).all(dim=-1)
