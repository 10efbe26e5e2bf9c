"""How much Gaussian smoothing changes the robust-loss gradient around trained models.

    python -m bench.smoothed_gradients RUN_DIR [RUN_DIR ...] [--relaxation deeppoly] [--batch 256]

For each model: the gradient of the certified (relaxation) loss on one training batch at the weights
(GRAD's gradient), against the mean gradient of 64 Gaussian perturbations at sigma 1e-3 (a close
estimate of the smoothed loss's gradient, which RGS and PGPE follow), the loss's one-sided slopes along
the smoothed gradient (a kink shows as two different slopes), and, for several sigmas, the
cosine between RGS's n = 2 estimate and GRAD's (mean of 5 draws) and between two single perturbed
gradients. A cosine near 1 means smoothing at that sigma leaves the gradient as it is (RGS is GRAD);
a small one with agreeing perturbed gradients means the weights sit on a kink or step of the loss
that every perturbation leaves. Prints one table; the numbers go into the reproduction's findings.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from gls_core.data import Dataset, load_dataset
from gls_core.nets.spec import NetSpec
from gls_core.training import Objective, Proposal, load_model
from gls_core.training.points import evaluate_members

SIGMAS = (1e-4, 1e-3, 3e-3, 1e-2)
REFERENCE_SIGMA, REFERENCE_SAMPLES = 1e-3, 64
STEPS = (1e-5, 1e-4, 1e-3)  # of the one-sided difference quotients along the smoothed gradient (L2)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def point_gradients(spec: NetSpec, theta: torch.Tensor, batch: Dataset, eps: float, objective: Objective,
                    sigma: float, count: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses [count] and gradients [count, D] at theta + sigma * z_k, z_k drawn as a training step draws them."""
    proposal = Proposal(step=step, seed=0, centre=theta, sigma=torch.full_like(theta, sigma), count=count,
                        symmetric=False, needs_grads=True)
    evaluated = evaluate_members(spec, proposal, objective, batch.x, batch.y, eps, 0, 64)
    assert evaluated.grads is not None
    return evaluated.losses, evaluated.grads


def loss_at(spec: NetSpec, theta: torch.Tensor, batch: Dataset, eps: float, objective: Objective) -> float:
    """The loss at theta alone (no gradient: the slopes need only values)."""
    proposal = Proposal(step=0, seed=0, centre=theta, sigma=torch.zeros_like(theta), count=1, symmetric=False,
                        needs_grads=False)
    return float(evaluate_members(spec, proposal, objective, batch.x, batch.y, eps, 0, 1).losses[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--relaxation", default="deeppoly")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    torch.manual_seed(0)
    objective = Objective("certified", args.relaxation, {})
    print("| model | loss | GRAD norm | smoothed norm | cos(GRAD, smoothed) | "
          + " | ".join(f"slope ahead / behind at {h:g}" for h in STEPS) + " | "
          + " | ".join(f"cos(RGS, GRAD) / cos(single, single) at {s:g}" for s in SIGMAS) + " |")
    print("|" + " --- |" * (5 + len(STEPS) + len(SIGMAS)))
    for run in args.runs:
        spec, theta, metadata = load_model(run)
        batch = load_dataset(metadata["dataset"], "train", subset=args.batch)

        at = partial(point_gradients, spec, theta, batch, args.eps, objective)
        losses, grads = at(0.0, 1, step=0)
        grad = grads[0]
        smoothed = at(REFERENCE_SIGMA, REFERENCE_SAMPLES, step=99)[1].mean(dim=0)
        direction = smoothed / smoothed.norm()
        loss = float(losses[0])
        cells = []
        for step in STEPS:
            ahead, behind = (loss_at(spec, theta + sign * step * direction, batch, args.eps, objective)
                             for sign in (1, -1))
            cells.append(f"{(ahead - loss) / step:.3f} / {(loss - behind) / step:.3f}")
        for sigma in SIGMAS:
            rgs = sum(cosine(at(sigma, 2, step=k)[1].mean(dim=0), grad) for k in range(1, 6)) / 5
            single = at(sigma, 2, step=50)[1]
            cells.append(f"{rgs:.3f} / {cosine(single[0], single[1]):.3f}")
        print(f"| {run.name} | {loss:.4f} | {float(grad.norm()):.3f} | {float(smoothed.norm()):.3f} "
              f"| {cosine(grad, smoothed):.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
