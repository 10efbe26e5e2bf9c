"""Throughput of every relaxation on a population, side by side with a per-member loop.

    python bench/relaxations.py [--full] [--json FILE]

For each (method, net, P, B): member-samples per second of the population-batched call, the same
for the naive way (each member's weights loaded into an ``nn.Sequential`` and bounded alone, timed
on a few members), peak resident memory, and the achieved matmul/convolution GFLOP/s (FLOPs counted
by ``torch.utils.flop_counter``) against this machine's float32 matmul rate, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gls_core import compute_bounds, kaiming_uniform, margin_spec, network, to_sequential
from gls_core.data import load_mnist

METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly", "alpha-crown")
# (net, P, B, methods): the default grid finishes in minutes; --full adds the rest.
DEFAULT_GRID: list[tuple[str, int, int, tuple[str, ...]]] = [
    ("cnn3", 1, 64, METHODS),
    ("cnn3", 16, 64, METHODS),
    ("cnn3", 256, 64, METHODS),
    ("cnn5", 16, 64, ("ibp", "crown-ibp")),
    ("cnn5", 1, 64, ("deeppoly",)),
]


@dataclass
class Record:
    method: str
    net: str
    P: int
    B: int
    eps: float
    seconds: float
    member_samples_per_s: float
    loop_member_samples_per_s: float
    speedup: float
    peak_mem_mb: float
    gflops_achieved: float
    matmul_gflops: float
    mean_width: float


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def reset_peak_memory() -> None:
    """Reset the kernel's resident-set high-water mark (VmHWM) of this process."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x, y = load_mnist("test")
        return x[:batch], y[:batch]
    except FileNotFoundError:
        generator = torch.Generator().manual_seed(1)
        return torch.rand(batch, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch,), generator=generator)


def run(net: str, members: int, batch: int, method: str, eps: float, loop_members: int, rate: float) -> Record:
    generator = torch.Generator().manual_seed(0)
    spec = network(net, "mnist")
    theta = kaiming_uniform(spec, generator)
    population = theta + 1e-3 * torch.randn(members, spec.num_params, generator=generator)
    x, y = inputs(batch)
    C = margin_spec(y, 10)
    with torch.no_grad():
        compute_bounds(spec, x[:2], eps, method, C=C[:2], params=population[:2])  # warm-up
        reset_peak_memory()
        start = time.perf_counter()
        lower, upper = compute_bounds(spec, x, eps, method, C=C, params=population)
        seconds = time.perf_counter() - start
        peak = peak_memory_mb()
        with FlopCounterMode(display=False) as counter:
            compute_bounds(spec, x, eps, method, C=C, params=population[: min(members, 4)])
        flops = counter.get_total_flops() * members / min(members, 4)
        looped = min(members, loop_members)
        start = time.perf_counter()
        for member in range(looped):
            module = to_sequential(spec, population[member])
            compute_bounds(module, x, eps, method, C=C)
        loop_seconds = time.perf_counter() - start
    throughput = members * batch / seconds
    loop_throughput = looped * batch / loop_seconds
    return Record(method, net, members, batch, eps, seconds, throughput, loop_throughput, throughput / loop_throughput,
                  peak, flops / seconds / 1e9, rate, (upper - lower).mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="P in {1,16,64,256} x B in {64,512} on CNN3 and CNN5")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--loop-members", type=int, default=4, help="members timed in the per-member loop")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path, help="write the records as a JSON list")
    args = parser.parse_args()
    chosen = tuple(args.methods.split(","))
    grid: list[tuple[str, int, int, tuple[str, ...]]]
    if args.full:
        grid = [(net, p, b, METHODS) for net in ("cnn3", "cnn5") for p in (1, 16, 64, 256) for b in (64, 512)]
    else:
        grid = DEFAULT_GRID
    rate = matmul_gflops()
    print(f"float32 matmul (2048^3): {rate:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    header = (f"{'method':<12}{'net':<6}{'P':>5}{'B':>5}{'member-samples/s':>18}{'loop':>10}{'speedup':>9}"
              f"{'peak MB':>9}{'GFLOP/s':>9}{'of matmul':>10}")
    print(header)
    records = []
    for net, members, batch, methods in grid:
        for method in methods:
            if method not in chosen:
                continue
            record = run(net, members, batch, method, args.eps, args.loop_members, rate)
            records.append(record)
            print(f"{record.method:<12}{record.net:<6}{record.P:>5}{record.B:>5}{record.member_samples_per_s:>18.0f}"
                  f"{record.loop_member_samples_per_s:>10.0f}{record.speedup:>8.1f}x{record.peak_mem_mb:>9.0f}"
                  f"{record.gflops_achieved:>9.1f}{record.gflops_achieved / rate:>10.1%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in records], indent=2))


if __name__ == "__main__":
    main()
