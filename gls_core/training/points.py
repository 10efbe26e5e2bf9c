"""Evaluate a range of a proposal's members in fixed blocks: the unit of work of a bound worker.

Blocks start at multiples of ``block`` from member 0, so a step split across any number of
processes at block boundaries computes every member with exactly the same tensor shapes as the
local trainer, and therefore gives bit-identical losses and gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import Interrupted, InvalidInput
from ..nets.spec import NetSpec
from ..validation import check_count
from .estimators import Evaluated, Proposal
from .objective import Objective


def block_ranges(count: int, block: int, start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
    """The blocks covering members [start, stop); start and stop must lie on block boundaries (or at count)."""
    stop = count if stop is None else stop
    check_count(block, "block")
    if not 0 <= start <= stop <= count:
        raise InvalidInput("start" if start < 0 or start > stop else "stop",
                           f"member range [{start}, {stop}) outside [0, {count})")
    if start % block or (stop % block and stop != count):
        raise InvalidInput("start" if start % block else "stop",
                           f"member range [{start}, {stop}) is not aligned to blocks of {block}")
    return [(first, min(first + block, stop)) for first in range(start, stop, block)]


def evaluate_members(spec: NetSpec, proposal: Proposal, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                     eps: float, seed: int, block: int, start: int = 0, stop: int | None = None, *,
                     should_stop: Callable[[], bool] | None = None) -> Evaluated:
    """Losses (and gradients when the proposal needs them) of members [start, stop).

    ``should_stop`` is polled before each block: a caller that has gone (a cancelled job, a closed
    connection) stops the work within one block, with :class:`Interrupted`.
    """
    losses, grads = [], []
    for first, last in block_ranges(proposal.count, block, start, stop):
        if should_stop is not None and should_stop():
            raise Interrupted(f"stopped before member {first} of [{start}, {proposal.count if stop is None else stop})")
        points = proposal.points(first, last)
        if proposal.needs_grads:
            block_losses, block_grads = objective.losses_and_grads(spec, points, x, y, eps, seed, proposal.step)
            grads.append(block_grads)
        else:
            block_losses = objective.losses(spec, points, x, y, eps, seed, proposal.step)
        losses.append(block_losses)
    if not losses:
        return Evaluated(torch.empty(0), torch.empty(0, proposal.centre.numel()) if proposal.needs_grads else None)
    return Evaluated(torch.cat(losses), torch.cat(grads) if proposal.needs_grads else None)
