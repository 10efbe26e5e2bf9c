"""The branch and bound's float32 subdomain bounds against float64, and the search's speed in each.

    python bench/verify_precision.py [--nets cnn3,cnn3-tiny] [--inputs 6] [--children 64] [--timeout 6]
        [--search-inputs 2,6,7,9]

1. **Rounding.** For each of the first ``--inputs`` MNIST test images (eps 0.1, the PGD warm starts of
   ``bench/relaxations.py``): the root bound, then ``--children`` subdomains with about a tenth of the
   root's unstable ReLUs split at random, bounded from the root's ReLU input bounds (as the search does)
   in float64 and in float32. Prints the largest difference between the two as a share of the slack
   that float32 bounds are widened by (``subdomains.FLOAT32_SLACK``), for the final bounds and the ReLU
   input bounds, and how many widened float32 bounds came out above their float64 value (must be 0).
   The difference includes the slope steps taking other paths in float32 (both are sound).
2. **Speed.** The complete verifier on ``--search-inputs`` (CNN3, inputs that stay open) with each
   precision, alternating, ``--timeout`` seconds each: subdomains bounded per second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relaxations import pgd_weights  # noqa: E402

from gls_core import network  # noqa: E402
from gls_core.bounds.types import Box  # noqa: E402
from gls_core.data import load_mnist  # noqa: E402
from gls_core.relaxations import ALPHA_CROWN  # noqa: E402
from gls_core.verify import VerifyOptions, verify_each  # noqa: E402
from gls_core.verify.property import robustness  # noqa: E402
from gls_core.verify.subdomains import FLOAT32_SLACK, Splits, bound_subdomains, no_splits  # noqa: E402


def random_children(root_pre_relu: dict[int, Box], count: int, generator: torch.Generator) -> Splits:
    splits: Splits = {}
    for index, bounds in root_pre_relu.items():
        unstable = (bounds.lower[0] < 0) & (bounds.upper[0] > 0)
        drawn = torch.rand(count, *unstable.shape, generator=generator)
        chosen = unstable.expand(count, *unstable.shape) & (drawn < 0.1)
        side = torch.where(torch.rand(count, *unstable.shape, generator=generator) < 0.5, 1, -1)
        splits[index] = (chosen * side).to(torch.int8)
    return splits


def rounding(nets: list[str], inputs: int, children: int) -> None:
    x, y = load_mnist("test")
    print(f"{'net':<10} {'inputs':>6} {'bounds':>7} {'final |f32-f64|/slack':>22} {'ReLU inputs':>12} {'above f64':>9}")
    for net in nets:
        spec, theta = network(net, "mnist"), pgd_weights(net).double()
        worst_final = worst_pre = 0.0
        above = total = 0
        for i in range(inputs):
            prop = robustness(spec, x[i].double(), int(y[i]), 0.1)
            root = bound_subdomains(spec, theta, prop, no_splits(spec), ALPHA_CROWN, 20)
            splits = random_children(root.pre_relu, children, torch.Generator().manual_seed(i))
            parents = {k: Box(b.lower.expand(children, *b.lower.shape[1:]),
                              b.upper.expand(children, *b.upper.shape[1:])) for k, b in root.pre_relu.items()}
            exact = bound_subdomains(spec, theta, prop, splits, ALPHA_CROWN, 8, parents=parents, precision="float64")
            reduced = bound_subdomains(spec, theta, prop, splits, ALPHA_CROWN, 8, parents=parents,
                                       precision="float32")
            finite = torch.isfinite(exact.lower) & torch.isfinite(reduced.lower)
            slack = FLOAT32_SLACK * (1 + exact.lower.abs())
            worst_final = max(worst_final, float(((reduced.lower + slack - exact.lower).abs() / slack)[finite].max()))
            above += int((reduced.lower[finite] > exact.lower[finite]).sum())
            total += int(finite.sum())
            for index, bounds in exact.pre_relu.items():
                pre_slack = FLOAT32_SLACK * (1 + bounds.lower.abs())
                moved = (reduced.pre_relu[index].lower + pre_slack - bounds.lower).abs() / pre_slack
                # where no slack was added: the parent's bound (inherited) or a split's exact 0
                computed = (reduced.pre_relu[index].lower != parents[index].lower) & (splits[index] == 0)
                if bool(computed.any()):
                    worst_pre = max(worst_pre, float(moved[computed].max()))
                above += int((reduced.pre_relu[index].lower > bounds.lower).sum())
        print(f"{net:<10} {inputs:>6} {total:>7} {worst_final:>22.4f} {worst_pre:>12.4f} {above:>9}", flush=True)


def speed(inputs: list[int], timeout: float) -> None:
    spec, theta = network("cnn3", "mnist"), pgd_weights("cnn3")
    x, y = load_mnist("test")
    print(f"\nCNN3, inputs {inputs}, {timeout:g} s each, one thread")
    print(f"{'precision':<10} {'round':>5} {'subdomains':>10} {'seconds':>8} {'per s':>7}")
    for round_ in (1, 2):
        for precision in ("float64", "float32"):
            verdicts = list(verify_each(spec, theta, x[inputs], y[inputs], 0.1,
                                        VerifyOptions(timeout=timeout, precision=precision)))
            count, seconds = sum(v.subdomains for v in verdicts), sum(v.seconds for v in verdicts)
            print(f"{precision:<10} {round_:>5} {count:>10} {seconds:>8.1f} {count / seconds:>7.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="cnn3,cnn3-tiny")
    parser.add_argument("--inputs", type=int, default=6)
    parser.add_argument("--children", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=6.0)
    parser.add_argument("--search-inputs", default="2,6,7,9")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounding(args.nets.split(","), args.inputs, args.children)
    speed([int(i) for i in args.search_inputs.split(",")], args.timeout)


if __name__ == "__main__":
    main()
