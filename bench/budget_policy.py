"""How the time split between branch and bound and the whole-region MILP decides VNN-COMP instances, in process.

    python bench/budget_policy.py BENCHMARK_DIR [--select 30:90:6] [--timeout 30]
        [--policies adaptive,fixed-0.1,bab-only]

Each selected instance of the benchmark's CSV is verified once per policy, in this process on one
thread (no start-up in the times): ``adaptive`` (the default, gls_core/verify/budget.py),
``fixed-0.1`` (the whole-region MILP after 10% of the limit, the behaviour before) and ``bab-only``
(never the whole-region MILP). Prints a line per run and a table per policy: solved, unknown,
median and p95 seconds of the solved ones, subdomains bounded; the machine's load average is in
every line, since the CPU is shared.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import statistics
from pathlib import Path

import torch

from gls_core.nets.onnx_io import from_onnx
from gls_core.verify import VerifyOptions, verify_cases
from gls_core.verify.vnnlib import read_vnnlib_cases

POLICIES = {"adaptive": {"budget": "adaptive"}, "fixed-0.1": {"budget": "fixed", "milp_after": 0.1},
            "bab-only": {"budget": "fixed", "milp_after": 1.0, "milp_root_unstable": 0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", type=Path)
    parser.add_argument("--select", default="30:90:6")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    (instances,) = list(args.benchmark.glob("*.csv"))
    rows = [r for r in csv.reader(instances.open()) if len(r) >= 2]
    rows = rows[slice(*(int(v) if v else None for v in args.select.split(":")))]
    results: dict[str, list[dict]] = {name: [] for name in args.policies.split(",")}
    for model_name, prop_name, *rest in rows:
        spec, theta = from_onnx(args.benchmark / model_name.strip().removesuffix(".gz"))
        cases = read_vnnlib_cases(args.benchmark / prop_name.strip().removesuffix(".gz"), spec.input_shape,
                                  spec.num_outputs)
        timeout = min(float(rest[0]) if rest else args.timeout, args.timeout)
        for name in results:
            options = dataclasses.replace(VerifyOptions(timeout=timeout), **POLICIES[name])  # type: ignore[arg-type]
            verdict = verify_cases(spec, theta.double(), cases, options, torch.Generator().manual_seed(0))
            row = {"policy": name, "model": model_name, "property": prop_name, "status": verdict.status,
                   "decided_by": verdict.decided_by, "seconds": round(verdict.seconds, 2),
                   "subdomains": verdict.subdomains, "load": round(os.getloadavg()[0], 1)}
            results[name].append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{len(rows)} instances, {args.timeout:g} s each, one thread\n")
    print("| policy | verified | falsified | unknown | median s (solved) | p95 s (solved) | subdomains |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        solved = sorted(r["seconds"] for r in runs if r["status"] != "unknown")
        p95 = solved[min(len(solved) - 1, int(0.95 * len(solved)))] if solved else float("nan")
        print(f"| {name} | {sum(r['status'] == 'verified' for r in runs)} | "
              f"{sum(r['status'] == 'falsified' for r in runs)} | {sum(r['status'] == 'unknown' for r in runs)} | "
              f"{statistics.median(solved) if solved else float('nan'):.2f} | {p95:.2f} | "
              f"{sum(r['subdomains'] for r in runs)} |")


if __name__ == "__main__":
    main()
