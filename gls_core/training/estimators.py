"""Gradient estimators, each split into *propose* (what to evaluate) and *update* (apply the results).

The split lets evaluation run in another process: a :class:`Proposal` is small (centre, sigma and a
seed) and any process rebuilds its points from it. Estimator state is a flat dict of tensors so it
checkpoints to safetensors and moves between processes unchanged.

- GRAD / PGD: the gradient at the centre, Adam with gradient clipping.
- RGS (Sec. 3.4): the mean gradient at theta + sigma * z_i, Adam with clipping; sigma decays with lr.
- PGPE (Sec. 3.3): symmetric pairs theta +/- sigma * z_i, centre and sigma updated by evotorch's
  functional PGPE (``pgpe_tell``) from the losses of the pairs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from ..bounds import KernelPlan
from .config import PGPEConfig, RGSConfig
from .noise import directions
from .schedules import StepHyper

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Proposal:
    """The points of one step: centre + sign * sigma * z_k, with z_k regenerated from (seed, step, k).

    Symmetric proposals interleave pairs as evotorch expects: member 2k is +z_k, member 2k+1 is -z_k.
    """

    step: int
    seed: int
    centre: torch.Tensor
    sigma: torch.Tensor  # per-parameter standard deviation, (D,)
    count: int
    symmetric: bool
    needs_grads: bool

    def __post_init__(self) -> None:
        if self.count < 1 or (self.symmetric and self.count % 2):
            raise ValueError(f"a proposal needs a positive (and for pairs even) count, got {self.count}")

    def points(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Members [start, stop) as a block [n, D]; any slicing gives the same rows as the whole."""
        stop = self.count if stop is None else stop
        if not 0 <= start <= stop <= self.count:
            raise ValueError(f"member range [{start}, {stop}) outside [0, {self.count})")
        members = torch.arange(start, stop, device=self.centre.device)
        if not bool((self.sigma != 0).any()):
            return self.centre.expand(len(members), -1).clone()
        if self.symmetric:
            first, last = start // 2, (stop + 1) // 2
            z = directions(self.seed, self.step, range(first, last), self.centre.numel()).to(self.centre)
            rows = z[members // 2 - first]
            signs = 1.0 - 2.0 * (members % 2).to(rows.dtype)
            return self.centre + signs.unsqueeze(1) * self.sigma * rows
        z = directions(self.seed, self.step, range(start, stop), self.centre.numel()).to(self.centre)
        return self.centre + self.sigma * z


@dataclass(frozen=True)
class Evaluated:
    """What the evaluation of a proposal returns: losses [N] and, when asked for, gradients [N, D]; and the
    kernel plan it followed or made (None where nothing was asked of the kernel choices)."""

    losses: torch.Tensor
    grads: torch.Tensor | None = None
    kernel_plan: KernelPlan | None = None


class Estimator(ABC):
    name: str
    needs_grads: bool

    @abstractmethod
    def init_state(self, theta: torch.Tensor) -> State:
        """Fresh estimator state around the initial weights."""

    @abstractmethod
    def propose(self, state: State, step: int, seed: int, hyper: StepHyper) -> Proposal:
        """The points to evaluate at this step."""

    @abstractmethod
    def update(self, state: State, proposal: Proposal, evaluated: Evaluated, hyper: StepHyper) -> State:
        """The next state, given the evaluated points."""

    def metrics(self, state: State, hyper: StepHyper) -> dict[str, float]:
        return {}

    @staticmethod
    def theta(state: State) -> torch.Tensor:
        return state["theta"]


class AdamEstimator(Estimator):
    """Shared by GRAD, PGD and RGS: average the point gradients, clip, take an Adam step."""

    def __init__(self, name: str, grad_clip: float | None, samples: int = 1, sigma: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.name, self.grad_clip, self.samples, self.sigma, self.betas = name, grad_clip, samples, sigma, betas
        self.needs_grads = True

    def init_state(self, theta: torch.Tensor) -> State:
        theta = theta.detach().clone()
        return {"theta": theta, "adam.exp_avg": torch.zeros_like(theta), "adam.exp_avg_sq": torch.zeros_like(theta),
                "adam.step": torch.zeros(())}

    def current_sigma(self, hyper: StepHyper) -> float:
        return self.sigma * hyper.sigma_scale

    def propose(self, state: State, step: int, seed: int, hyper: StepHyper) -> Proposal:
        theta = state["theta"]
        sigma = torch.full_like(theta, self.current_sigma(hyper))
        return Proposal(step=step, seed=seed, centre=theta, sigma=sigma, count=self.samples, symmetric=False,
                        needs_grads=True)

    def update(self, state: State, proposal: Proposal, evaluated: Evaluated, hyper: StepHyper) -> State:
        if evaluated.grads is None or evaluated.grads.shape != (proposal.count, proposal.centre.numel()):
            raise ValueError(f"{self.name} needs gradients of shape ({proposal.count}, {proposal.centre.numel()})")
        param = torch.nn.Parameter(state["theta"].clone())
        optimizer = torch.optim.Adam([param], lr=hyper.lr, betas=self.betas, foreach=False)
        optimizer.state[param] = {"step": state["adam.step"].clone(), "exp_avg": state["adam.exp_avg"].clone(),
                                  "exp_avg_sq": state["adam.exp_avg_sq"].clone()}
        param.grad = evaluated.grads.mean(dim=0)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([param], self.grad_clip)
        optimizer.step()
        adam = optimizer.state[param]
        return {"theta": param.detach(), "adam.exp_avg": adam["exp_avg"], "adam.exp_avg_sq": adam["exp_avg_sq"],
                "adam.step": adam["step"]}

    def metrics(self, state: State, hyper: StepHyper) -> dict[str, float]:
        return {"sigma": self.current_sigma(hyper)} if self.samples > 1 or self.sigma > 0 else {}


class PGPEEstimator(Estimator):
    """PGPE through evotorch's functional API; the population comes from our own seeded noise."""

    name = "pgpe"
    needs_grads = False

    def __init__(self, config: PGPEConfig) -> None:
        self.config = config

    def _evotorch_state(self, theta: torch.Tensor, stdev: torch.Tensor, lr: float) -> Any:
        from evotorch.algorithms.functional import pgpe

        return pgpe(center_init=theta, center_learning_rate=lr, stdev_learning_rate=self.config.sigma_lr,
                    objective_sense="min", ranking_method=self.config.ranking, optimizer=self.config.optimizer,
                    stdev_init=stdev, stdev_max_change=self.config.sigma_max_change, symmetric=True)

    def init_state(self, theta: torch.Tensor) -> State:
        theta = theta.detach().clone()
        stdev = torch.full_like(theta, self.config.sigma_init)
        state = self._evotorch_state(theta, stdev, 1.0)
        optimizer = {f"opt.{key}": value for key, value in state.optimizer_state._asdict().items()
                     if key not in ("center", "center_learning_rate")}
        return {"theta": theta, "pgpe.stdev": stdev, **optimizer}

    def propose(self, state: State, step: int, seed: int, hyper: StepHyper) -> Proposal:
        return Proposal(step=step, seed=seed, centre=state["theta"], sigma=state["pgpe.stdev"],
                        count=self.config.popsize, symmetric=True, needs_grads=False)

    def update(self, state: State, proposal: Proposal, evaluated: Evaluated, hyper: StepHyper) -> State:
        from evotorch.algorithms.functional import pgpe_tell

        losses = evaluated.losses
        if losses.shape != (proposal.count,):
            raise ValueError(f"pgpe needs {proposal.count} losses, got shape {tuple(losses.shape)}")
        if not bool(torch.isfinite(losses).all()):
            raise ValueError("pgpe got non-finite losses; lower the learning rate or sigma")
        current = self._evotorch_state(state["theta"], state["pgpe.stdev"], hyper.lr)
        stored = {key.removeprefix("opt."): value for key, value in state.items() if key.startswith("opt.")}
        current = current._replace(optimizer_state=current.optimizer_state._replace(**stored))
        after = pgpe_tell(current, proposal.points(), losses)
        optimizer = after.optimizer_state._asdict()
        return {"theta": optimizer["center"].detach().clone(), "pgpe.stdev": after.stdev.detach().clone(),
                **{f"opt.{key}": optimizer[key] for key in stored}}

    def metrics(self, state: State, hyper: StepHyper) -> dict[str, float]:
        return {"sigma": float(state["pgpe.stdev"].mean())}


def make_estimator(name: str, *, grad_clip: float | None, pgpe: PGPEConfig, rgs: RGSConfig) -> Estimator:
    if name in ("grad", "pgd"):
        return AdamEstimator(name, grad_clip)
    if name == "rgs":
        return AdamEstimator("rgs", grad_clip, samples=rgs.samples, sigma=rgs.sigma)
    if name == "pgpe":
        return PGPEEstimator(pgpe)
    raise ValueError(f"unknown estimator {name!r}; expected grad, pgd, pgpe or rgs")
