"""GLS against alpha-beta-CROWN on VNN-COMP instances: solved, unknown, median and p95 seconds, disagreements.

    python bench/vnncomp.py BENCHMARK_DIR [--csv instances.csv] [--select 0:30] [--timeout 30]
        [--tools gls,abcrown] [--abcrown-config ../shared/tools/abcrown/generic_cpu.yaml] [--out results.jsonl]
        [--set milp_after=1.0 ...]

Each instance of the benchmark's CSV (ONNX, VNN-LIB, timeout) in the selected slice runs with the
smaller of its own timeout and ``--timeout``, one thread per tool: GLS as a ``gls verify``
process, alpha-beta-CROWN through ``../shared/tools/abcrown/run_abcrown.py`` (``$ABC`` names its
set-up directory, see that folder's README). Every ``sat`` of either tool is checked by a forward
pass of GLS's import and by onnxruntime; an unchecked sat counts as a disagreement, and so does
one tool's sat against the other's unsat. Seconds are each process's wall time, start-up included.
Prints a line per instance and the table; ``--out`` keeps one JSON object per instance and tool.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from gls_core.nets.onnx_io import from_onnx
from gls_core.population import forward
from gls_core.verify.vnnlib import read_vnnlib_cases

ROOT = Path(__file__).resolve().parent.parent
ABCROWN_TOOLS = ROOT.parent / "shared" / "tools" / "abcrown"
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_gls(model: Path, prop: Path, timeout: float, result: Path, sets: list[str]) -> tuple[str, float, dict]:
    """GLS's answer, process seconds and its verdict (``seconds`` there excludes start-up and loading)."""
    verdict = result.with_suffix(".json")
    verdict.unlink(missing_ok=True)
    command = [sys.executable, "-m", "gls_core.cli", "verify", str(model), str(prop), "--timeout", str(timeout),
               "--result", str(result), "--threads", "1", "--json", str(verdict)]
    for item in sets:
        command += ["--set", item]
    answer, seconds = _timed(command, timeout, result)
    return answer, seconds, json.loads(verdict.read_text()) if verdict.exists() else {}


def run_abcrown(model: Path, prop: Path, timeout: float, result: Path, config: Path) -> tuple[str, float]:
    abc = os.environ.get("ABC")
    if not abc:
        raise SystemExit("set ABC to alpha-beta-CROWN's set-up directory (../shared/tools/abcrown/README.md)")
    command = [f"{abc}/abv/bin/python", str(ABCROWN_TOOLS / "run_abcrown.py"), "--config", str(config),
               "--onnx_path", str(model), "--vnnlib_path", str(prop), "--timeout", str(timeout),
               "--results_file", str(result), "--save_adv_example", "--cex_path", str(result.with_suffix(".cex"))]
    answer, seconds = _timed(command, timeout, result)
    cex = result.with_suffix(".cex")
    if answer == "sat" and cex.exists():  # its result file says only "sat"; the assignment is written beside it
        result.write_text("sat\n" + cex.read_text())
    return answer, seconds


def _timed(command: list[str], timeout: float, result: Path) -> tuple[str, float]:
    result.unlink(missing_ok=True)
    result.with_suffix(".cex").unlink(missing_ok=True)
    started = time.monotonic()
    try:
        subprocess.run(command, env={**os.environ, **THREADS}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=timeout * 2 + 60, check=False)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    seconds = time.monotonic() - started
    text = result.read_text().strip() if result.exists() else ""
    answer = text.split()[0] if text else "error"
    return {"unsat": "unsat", "sat": "sat", "holds": "unsat", "violated": "sat"}.get(answer, "unknown"), seconds


def sat_checked(model: Path, prop: Path, result: Path) -> bool:
    """Whether the result file's X assignment lies in a box of the property and violates it, by both forwards."""
    values = {int(i): float(v) for i, v in re.findall(r"\(X_(\d+)\s+([-+0-9.eE]+)\)", result.read_text())}
    spec, theta = from_onnx(model)
    if len(values) != int(np.prod(spec.input_shape)):
        return False  # no complete assignment: a sat that cannot be checked
    x = torch.tensor([values[i] for i in range(len(values))], dtype=torch.float64).view(1, *spec.input_shape)
    ours = forward(spec, theta.double().view(1, -1), x)[0]
    loaded = onnx.load(str(model))
    initializers = {t.name for t in loaded.graph.initializer}
    (graph_input,) = [i for i in loaded.graph.input if i.name not in initializers]
    dims = [d.dim_value or 1 for d in graph_input.type.tensor_type.shape.dim]
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {graph_input.name: x.numpy().astype(np.float32).reshape(dims)})
    for case in read_vnnlib_cases(prop, spec.input_shape, spec.num_outputs):
        inside = bool(((x[0] >= case.lower - 1e-6) & (x[0] <= case.upper + 1e-6)).all())
        for outputs in (ours, torch.from_numpy(theirs.reshape(1, -1)).double()):
            if inside and float(case.worst(outputs @ case.C.T + case.d)) > 1e-6:
                inside = False
        if inside:
            return True
    return False


def summary(rows: list[dict], tool: str) -> str:
    mine = [r for r in rows if r["tool"] == tool]
    solved = [r for r in mine if r["answer"] in ("sat", "unsat")]
    seconds = sorted(r["seconds"] for r in solved)
    p95 = seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))] if seconds else float("nan")
    return (f"| {tool} | {len(mine)} | {len(solved)} ({sum(r['answer'] == 'unsat' for r in mine)} unsat / "
            f"{sum(r['answer'] == 'sat' for r in mine)} sat) | {len(mine) - len(solved)} | "
            f"{statistics.median(seconds) if seconds else float('nan'):.2f} | {p95:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", type=Path)
    parser.add_argument("--csv", default=None, help="instances file (default: the folder's only *.csv)")
    parser.add_argument("--select", default="0:1000", help="slice of the CSV's rows, start:stop[:step]")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--tools", default="gls,abcrown")
    parser.add_argument("--abcrown-config", type=Path, default=ABCROWN_TOOLS / "generic_cpu.yaml")
    parser.add_argument("--set", action="append", default=[], help="VerifyOptions field=value for gls")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    (instances,) = [args.benchmark / args.csv] if args.csv else list(args.benchmark.glob("*.csv"))
    rows_in = [r for r in csv.reader(instances.open()) if len(r) >= 2]
    rows_in = rows_in[slice(*(int(v) if v else None for v in args.select.split(":")))]
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "gls-vnncomp"
    work.mkdir(exist_ok=True)
    rows: list[dict] = []
    for model_name, prop_name, limit in ((r[0], r[1], r[2] if len(r) > 2 else args.timeout) for r in rows_in):
        model = args.benchmark / model_name.strip().removesuffix(".gz")
        prop = args.benchmark / prop_name.strip().removesuffix(".gz")
        timeout = min(float(limit), args.timeout)
        answers = {}
        for tool in args.tools.split(","):
            result = work / f"{tool}.txt"
            verdict: dict = {}
            if tool == "gls":
                answer, seconds, verdict = run_gls(model, prop, timeout, result, args.set)
            else:
                answer, seconds = run_abcrown(model, prop, timeout, result, args.abcrown_config)
            checked = sat_checked(model, prop, result) if answer == "sat" else None
            answers[tool] = answer
            row = {"tool": tool, "model": model.name, "property": prop.name, "timeout": timeout, "answer": answer,
                   "seconds": round(seconds, 2), "sat_checked": checked, "load": os.getloadavg()[0],
                   **{f"verdict_{k}": verdict[k] for k in ("seconds", "subdomains", "decided_by") if k in verdict}}
            rows.append(row)
            if args.out:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        if {"sat", "unsat"} <= set(answers.values()):
            print(f"DISAGREEMENT on {model.name} {prop.name}: {answers}", flush=True)
    bad = [r for r in rows if r["sat_checked"] is False]
    disagreements = sum(1 for i in range(0, len(rows), len(args.tools.split(",")))
                        if {"sat", "unsat"} <= {r["answer"] for r in rows[i:i + len(args.tools.split(","))]})
    print("\n| tool | instances | solved | unknown | median s (solved) | p95 s (solved) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for tool in args.tools.split(","):
        print(summary(rows, tool))
    print(f"\ndisagreements: {disagreements}; sat answers failing the check: {len(bad)}")


if __name__ == "__main__":
    main()
