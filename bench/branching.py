"""Branching rules side by side: the same inputs, the same time limit, one rule at a time.

    python bench/branching.py [--net cnn3] [--limit 20] [--timeout 30] [--rules widest,babsr,fsb] [--milp-after 1]

For the first ``--limit`` MNIST test images of the PGD-warm-started model (as ``bench/verification.py``
uses), runs the complete verifier once per rule and prints a table: verified / falsified / unknown,
the median and p95 seconds per input, subdomains per second, and for the inputs some rule left
open, the best bound each rule reached (higher is closer to a proof). ``--milp-after 1`` (the
default) gives the whole time to the branch and bound, so the rules are compared without the
whole-region MILP deciding for them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relaxations import pgd_weights  # noqa: E402

from gls_core import network  # noqa: E402
from gls_core.data import load_mnist  # noqa: E402
from gls_core.verify import Verdict, VerifyOptions, verify_each  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="cnn3")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--rules", default="widest,babsr,fsb")
    parser.add_argument("--milp-after", type=float, default=1.0)
    args = parser.parse_args()
    spec = network(args.net, "mnist")
    theta = pgd_weights(args.net)
    x, y = load_mnist("test")
    x, y = x[: args.limit], y[: args.limit]
    results: dict[str, list[Verdict]] = {}
    for rule in args.rules.split(","):
        options = VerifyOptions(timeout=args.timeout, branching=rule, milp_after=args.milp_after, budget="fixed")
        results[rule] = []
        for i, verdict in enumerate(verify_each(spec, theta, x, y, args.eps, options)):
            results[rule].append(verdict)
            print(f"{rule} input {i}: {verdict.status} by {verdict.decided_by}, {verdict.seconds:.1f} s, "
                  f"{verdict.subdomains} subdomains, bound {verdict.bound:.4f}", flush=True)
    print(f"\n{args.net}, first {args.limit} MNIST test images, eps {args.eps}, {args.timeout:g} s per input, "
          f"milp_after {args.milp_after:g}\n")
    print("| rule | verified | falsified | unknown | median s | p95 s | subdomains/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rule, verdicts in results.items():
        counts = {status: sum(v.status == status for v in verdicts) for status in ("verified", "falsified", "unknown")}
        seconds = [v.seconds for v in verdicts]
        rate = sum(v.subdomains for v in verdicts) / max(sum(seconds), 1e-9)
        print(f"| {rule} | {counts['verified']} | {counts['falsified']} | {counts['unknown']} | "
              f"{statistics.median(seconds):.2f} | {percentile(seconds, 0.95):.2f} | {rate:.1f} |")
    open_inputs = [i for i in range(len(x)) if any(results[rule][i].status == "unknown" for rule in results)]
    if open_inputs:
        print("\nBest bound on the inputs some rule left open (a verified input shows its proven minimum):\n")
        print("| input | " + " | ".join(results) + " |")
        print("| --- |" + " --- |" * len(results))
        for i in open_inputs:
            cells = [f"{results[rule][i].bound:.4f} ({results[rule][i].status[0]})" for rule in results]
            print(f"| {i} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
