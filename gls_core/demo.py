"""Bounds of every relaxation for a population of CNN3 weight vectors on real MNIST test images.

Run ``python -m gls_core.demo``: it prints, per method, the mean width of the bounds on the
logit differences, the share of (member, image) pairs certified, and the throughput.
"""

from __future__ import annotations

import argparse
import time

import torch

from .bounds import compute_bounds, margin_spec
from .data import load_mnist
from .losses import certified
from .nets import kaiming_uniform, network
from .relaxations import records

METHOD_ORDER = tuple(record.name for record in records())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn3")
    parser.add_argument("--members", type=int, default=16, help="population size P")
    parser.add_argument("--images", type=int, default=64, help="batch size B")
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--sigma", type=float, default=1e-3, help="spread of the population around theta")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    spec = network(args.arch, "mnist")
    theta = kaiming_uniform(spec, generator)
    noise = torch.randn(args.members, spec.num_params, generator=generator)
    population = theta + args.sigma * noise
    try:
        x, y = load_mnist("test")
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    x, y = x[: args.images], y[: args.images]
    C = margin_spec(y, 10)
    print(f"{spec.name}: D={spec.num_params}, P={args.members}, B={args.images}, eps={args.eps}")
    print(f"{'method':<12} {'mean width':>11} {'certified':>10} {'member-samples/s':>17}")
    with torch.no_grad():
        for method in METHOD_ORDER:
            start = time.perf_counter()
            lower, upper = compute_bounds(spec, x, args.eps, method, C=C, params=population)
            elapsed = time.perf_counter() - start
            width = (upper - lower).mean().item()
            share = certified(upper).float().mean().item()
            rate = args.members * args.images / elapsed
            print(f"{method:<12} {width:>11.4f} {share:>10.1%} {rate:>17.0f}")


if __name__ == "__main__":
    main()
