"""Complete verification on the PGD-warm-started models, against the incomplete certificates and a strong attack.

    python bench/verification.py [--net cnn3-tiny] [--eps 0.1] [--limit 1000] [--timeout 30] [--json FILE]

For the first ``--limit`` MNIST test images: the branch and bound's verified / falsified / unknown
counts, time per input (median, p95) and subdomains per second; DeepPoly- and alpha-CROWN- (20
steps) certified counts of the same inputs; PGD-robust inputs (100 steps, 10 restarts). It checks
that every verified input survives the attack and is correctly classified, that every certified
input is verified, and that every counterexample violates the property by a plain forward pass;
a failed check stops the run. The models are the project's PGD presets trained 3 epochs (the same
warm starts as ``bench/relaxations.py``, trained once and cached).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relaxations import pgd_weights  # noqa: E402

from gls_core import compute_bounds, margin_spec, network  # noqa: E402
from gls_core.attacks import pgd_attack  # noqa: E402
from gls_core.data import load_mnist  # noqa: E402
from gls_core.population import forward  # noqa: E402
from gls_core.relaxations import ALPHA_CROWN  # noqa: E402
from gls_core.verify import VerifyOptions, robustness, summarize, verify_each  # noqa: E402


def certified(spec, theta, x, y, eps, method, **options) -> torch.Tensor:  # type: ignore[no-untyped-def]
    C = margin_spec(y, spec.num_outputs)
    with torch.no_grad():
        _, upper = compute_bounds(spec, x, eps, method, C=C, params=theta, sides="upper", **options)
    return (upper < 0).all(1)  # rows y_j - y_true: every margin bounded below zero


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="cnn3-tiny")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    spec = network(args.net, "mnist")
    theta = pgd_weights(args.net)
    x, y = load_mnist("test")
    x, y = x[: args.limit], y[: args.limit]
    correct = forward(spec, theta.view(1, -1), x)[0].argmax(1) == y
    deeppoly = certified(spec, theta, x, y, args.eps, "deeppoly") & correct
    alpha = certified(spec, theta, x, y, args.eps, ALPHA_CROWN, steps=20) & correct
    attacked = pgd_attack(spec, theta, x, y, args.eps, steps=100, restarts=10,
                          generator=torch.Generator().manual_seed(0))
    robust = correct & (forward(spec, theta.view(1, -1), attacked)[0].argmax(1) == y)
    options = VerifyOptions(timeout=args.timeout)
    verdicts = []
    started = time.monotonic()
    theta64 = theta.double()
    for i, verdict in enumerate(verify_each(spec, theta, x, y, args.eps, options)):
        prop = robustness(spec, x[i].double(), int(y[i]), args.eps)  # for the checks below
        verdicts.append(verdict)
        if verdict.status == "verified" and not bool(robust[i]):
            raise SystemExit(f"input {i}: verified, but the attack or the clean input breaks it")
        if verdict.status != "verified" and bool(alpha[i] | deeppoly[i]):
            raise SystemExit(f"input {i}: certified by a relaxation but {verdict.status}")
        if verdict.status == "falsified":
            assert verdict.counterexample is not None
            if not prop.contains(verdict.counterexample) or float(
                    prop.rows(spec, theta64, verdict.counterexample.unsqueeze(0)).min()) > 0:
                raise SystemExit(f"input {i}: the counterexample does not violate the property")
        if (i + 1) % 10 == 0:
            counts = summarize(verdicts)
            print(f"{i + 1:5d} inputs, {time.monotonic() - started:7.1f} s: verified {counts['verified']} "
                  f"falsified {counts['falsified']} unknown {counts['unknown']}", flush=True)
    summary = summarize(verdicts)
    rows = [("inputs", args.limit), ("correctly classified", int(correct.sum())),
            ("DeepPoly-certified", int(deeppoly.sum())), ("alpha-CROWN-certified (20 steps)", int(alpha.sum())),
            ("PGD-robust (100 steps, 10 restarts)", int(robust.sum())),
            ("verified (branch and bound)", summary["verified"]), ("falsified", summary["falsified"]),
            ("unknown", summary["unknown"]), ("seconds per input, median", summary["seconds_median"]),
            ("seconds per input, p95", summary["seconds_p95"]),
            ("subdomains per second", summary["subdomains_per_second"])]
    decided: dict[str, int] = {}
    for verdict in verdicts:
        key = f"{verdict.status} by {verdict.decided_by}"
        decided[key] = decided.get(key, 0) + 1
    print(f"\n{spec.name}, PGD warm start (3 epochs), eps {args.eps}, at most {args.timeout:g} s per input\n")
    print("| quantity | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\n| decided | inputs |\n| --- | --- |")
    for name, count in sorted(decided.items()):
        print(f"| {name} | {count} |")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": dict(rows), "decided": decided,
                                         "verdicts": [v.to_dict() | {"index": i} for i, v in enumerate(verdicts)]}))


if __name__ == "__main__":
    main()
