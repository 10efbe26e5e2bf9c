"""GLS's DeepPoly against auto_LiRPA's CROWN on deep networks, one network at a time and the RGS step.

    python bench/reference.py --lirpa-python /path/to/venv/bin/python [--nets cnn5,cnn5-l,cnn7]
        [--batch 16] [--rounds 3] [--repeats 2] [--threads 1] [--json FILE]

auto_LiRPA is not a dependency of the project: install it in its own environment (``pip install
torch==2.13.0`` and ``pip install --no-deps -e auto_LiRPA`` plus numpy, packaging, appdirs, pyyaml,
tqdm, graphviz) and name its interpreter. Its side runs in ``bench/lirpa_worker.py``, a process that
stays up, so the two engines alternate case by case in one run, each call timed inside its own
process (no start-up, tracing before the clock).

Cases, on MNIST test images, eps 0.1, kaiming weights (seed 0):

- ``one network``: the bounds of the margins of one weight set (P = 1) on B inputs, without gradients.
  GLS computes the upper side of y_i - y_t, auto_LiRPA the lower side of y_t - y_i: the same numbers,
  compared (max relative difference) so the two are known to do the same work.
- ``RGS step``: P = 2 perturbed weight sets, bounds with gradients and ``backward`` of the robust loss;
  GLS bounds the two as one population, auto_LiRPA one after the other.

Each row gives the median seconds per call over the rounds, samples (member-samples) per second and
GLS's speed as a multiple of auto_LiRPA's, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gls_core import compute_bounds, kaiming_uniform, margin_spec, network, to_sequential
from gls_core.losses import robust_loss
from gls_core.nets.spec import Conv2d, Flatten, Linear, NetSpec, ReLU
from gls_core.relaxations import DEEPPOLY

ROOT = Path(__file__).resolve().parent.parent
RGS_SIGMA = 3e-3  # per-coordinate standard deviation of the RGS perturbations (the experiment's sigma)


@dataclass
class Row:
    """One case's medians for both engines."""

    case: str
    net: str
    P: int
    B: int
    gls_s: float
    lirpa_s: float
    gls_rate: float
    lirpa_rate: float
    speedup: float
    max_rel_diff: float | None
    gls_calls: list[float]
    lirpa_calls: list[float]


def layer_list(spec: NetSpec) -> list[list[Any]]:
    """The network as plain data for the worker: (kind, constructor arguments)."""
    layers: list[list[Any]] = []
    for layer in spec.layers:
        if isinstance(layer, Conv2d):
            layers.append(["conv", layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding])
        elif isinstance(layer, Linear):
            layers.append(["linear", layer.in_features, layer.out_features])
        elif isinstance(layer, ReLU):
            layers.append(["relu"])
        elif isinstance(layer, Flatten):
            layers.append(["flatten"])
        else:
            raise ValueError(f"{type(layer).__name__} has no auto_LiRPA counterpart in this benchmark")
    return layers


class Worker:
    """auto_LiRPA's process: one JSON request per line in, one answer per line out."""

    def __init__(self, python: str, threads: int) -> None:
        self.process = subprocess.Popen([python, str(ROOT / "bench" / "lirpa_worker.py"), str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=tempfile.gettempdir())

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the auto_LiRPA worker exited (rc {self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"auto_LiRPA: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def mnist_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    from gls_core.data import load_mnist
    x, y = load_mnist("test")
    return x[:batch], y[:batch]


def gls_bounds(spec: NetSpec, population: torch.Tensor, x: torch.Tensor, C: torch.Tensor, eps: float,
               repeats: int) -> tuple[list[float], torch.Tensor]:
    """Seconds of each call (after a warm-up that makes the kernel choices) and the last bounds."""
    seconds: list[float] = []
    upper = torch.empty(0)
    with torch.no_grad():
        for call in range(repeats + 1):
            start = time.perf_counter()
            _, upper = compute_bounds(spec, x, eps, DEEPPOLY, C=C, params=population, sides="upper")
            if call:
                seconds.append(time.perf_counter() - start)
    return seconds, upper


def gls_rgs_step(spec: NetSpec, population: torch.Tensor, x: torch.Tensor, C: torch.Tensor, eps: float,
                 repeats: int) -> list[float]:
    seconds: list[float] = []
    for call in range(repeats + 1):
        params = population.clone().requires_grad_(True)
        start = time.perf_counter()
        _, upper = compute_bounds(spec, x, eps, DEEPPOLY, C=C, params=params, sides="upper")
        robust_loss(upper).mean(dim=1).sum().backward()
        if call:
            seconds.append(time.perf_counter() - start)
    return seconds


def run_net(net: str, batch: int, eps: float, rounds: int, repeats: int, worker: Worker, scratch: Path,
            cases: list[str]) -> list[Row]:
    spec = network(net, "mnist")
    generator = torch.Generator().manual_seed(0)
    theta = kaiming_uniform(spec, generator)
    rgs = theta + RGS_SIGMA * torch.randn(2, spec.num_params, generator=generator)
    x, y = mnist_inputs(batch)
    C = margin_spec(y, 10)
    rows: list[Row] = []
    for case, population in (("one network", theta.unsqueeze(0)), ("RGS step", rgs)):
        if case not in cases:
            continue
        path = scratch / f"{net}-{len(population)}.pt"
        torch.save({"layers": layer_list(spec), "members": [to_sequential(spec, m).state_dict() for m in population],
                    "x": x, "C": -C, "eps": eps}, path)
        mode = "bounds" if case == "one network" else "grad"
        gls_calls: list[float] = []
        lirpa_calls: list[float] = []
        diff: float | None = None
        for _ in range(rounds):  # alternate the engines so a change of machine load reaches both
            if mode == "bounds":
                seconds, upper = gls_bounds(spec, population, x, C, eps, repeats)
            else:
                seconds = gls_rgs_step(spec, population, x, C, eps, repeats)
            gls_calls += seconds
            answer = worker.ask(case=str(path), mode=mode, repeats=repeats)
            lirpa_calls += answer["seconds"]
            if mode == "bounds":
                reference = -torch.tensor(answer["lower"])
                diff = ((upper[0] - reference).abs() / reference.abs().clamp_min(1e-6)).max().item()
        gls_s, lirpa_s = statistics.median(gls_calls), statistics.median(lirpa_calls)
        samples = len(population) * batch
        rows.append(Row(case, net, len(population), batch, gls_s, lirpa_s, samples / gls_s, samples / lirpa_s,
                        lirpa_s / gls_s, diff, gls_calls, lirpa_calls))
        print(format_row(rows[-1]), flush=True)
    return rows


HEADER = (f"{'case':<12} {'net':<7} {'P':>2} {'B':>4} {'GLS s':>8} {'LiRPA s':>8} {'GLS /s':>8} {'LiRPA /s':>9} "
          f"{'GLS/LiRPA':>9} {'max rel diff':>12}")


def format_row(row: Row) -> str:
    diff = "-" if row.max_rel_diff is None else f"{row.max_rel_diff:.1e}"
    return (f"{row.case:<12} {row.net:<7} {row.P:>2} {row.B:>4} {row.gls_s:>8.3f} {row.lirpa_s:>8.3f} "
            f"{row.gls_rate:>8.1f} {row.lirpa_rate:>9.1f} {row.speedup:>8.2f}x {diff:>12}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lirpa-python", required=True, help="the interpreter of an environment with auto_LiRPA")
    parser.add_argument("--nets", default="cnn5,cnn5-l,cnn7")
    parser.add_argument("--cases", default="one network,RGS step")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two engines per case")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per round, after one warm-up")
    parser.add_argument("--threads", type=int, default=1, help="threads of each engine")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [case.strip() for case in args.cases.split(",")]
    worker = Worker(args.lirpa_python, args.threads)
    print(f"GLS DeepPoly against auto_LiRPA CROWN, {args.threads} thread(s) each, eps {args.eps}, "
          f"median of {args.rounds} x {args.repeats} calls", flush=True)
    print(HEADER, flush=True)
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for net in args.nets.split(","):
                rows += run_net(net.strip(), args.batch, args.eps, args.rounds, args.repeats, worker, Path(scratch),
                                cases)
    finally:
        worker.close()
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=1))


if __name__ == "__main__":
    main()
