"""Throughput of every relaxation on a population, side by side with a per-member loop, plus the PGPE step.

    python bench/relaxations.py [--full] [--device cuda] [--json FILE] [--skip-step] [--skip-grid]

Grid: for each (method, net, P, B) with kaiming weights, member-samples per second of the population
call (upper bounds of the margins, as the robust loss and certification ask), the same for our own
per-member loop (each member's weights loaded into an ``nn.Sequential`` and bounded alone, timed on a
few members), the ratio and peak resident memory (CPU) or allocated memory (CUDA). The float32 matmul
rate of the device, measured at the start, says how fast the machine was during the run.

Step: the bounds time of one PGPE step on PGD-trained weights (the workload the paper trains with:
P = 256, B = 512 on CNN3-tiny and CNN3), and the RGS case on CNN5 (P = 2) and one network. The PGD
warm starts are trained once by the project's own presets (3 epochs) and cached in
``$GLS_BENCH_CACHE`` (default ``~/.cache/gls/bench``). The kernel choices made are printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gls_core import compute_bounds, kaiming_uniform, margin_spec, network, to_sequential
from gls_core.bounds import kernels
from gls_core.data import load_mnist
from gls_core.training import load_model

METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly", "alpha-crown")
ROOT = Path(__file__).resolve().parent.parent
# (net, P, B, methods): the default grid finishes in minutes; --full adds the rest.
DEFAULT_GRID: list[tuple[str, int, int, tuple[str, ...]]] = [
    ("cnn3", 1, 64, METHODS),
    ("cnn3", 16, 64, METHODS),
    ("cnn3", 256, 64, METHODS),
    ("cnn5", 16, 64, ("ibp", "crown-ibp")),
    ("cnn5", 2, 16, ("crown-ibp", "deeppoly")),
    ("cnn5", 1, 16, ("crown-ibp", "deeppoly")),
]
# (net, P, B, method) on PGD-trained weights.
STEP_GRID: list[tuple[str, int, int, str]] = [
    ("cnn3-tiny", 256, 512, "deeppoly"),
    ("cnn3-tiny", 256, 512, "alpha-crown"),
    ("cnn3-tiny", 256, 512, "crown-ibp"),
    ("cnn3-tiny", 256, 512, "ibp"),
    ("cnn3", 256, 512, "deeppoly"),
    ("cnn3", 256, 512, "crown-ibp"),
]


@dataclass
class Record:
    method: str
    net: str
    weights: str
    P: int
    B: int
    eps: float
    seconds: float
    member_samples_per_s: float
    loop_member_samples_per_s: float | None
    speedup: float | None
    peak_mem_mb: float
    matmul_gflops: float
    mean_upper: float


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Reset the high-water mark: the kernel's VmHWM on CPU, the allocator's peak on CUDA."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def inputs(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x, y = load_mnist("test")
    except FileNotFoundError:
        generator = torch.Generator().manual_seed(1)
        x, y = torch.rand(10000, 1, 28, 28, generator=generator), torch.randint(0, 10, (10000,), generator=generator)
    return x[:batch].to(device), y[:batch].to(device)


def pgd_weights(net: str) -> torch.Tensor:
    """PGD-trained weights of ``net`` from the project's preset (3 epochs), trained once and cached."""
    cache = Path(os.environ.get("GLS_BENCH_CACHE", Path.home() / ".cache" / "gls" / "bench")) / f"{net}-pgd3"
    model = cache / "model.safetensors"
    if not model.exists():
        preset = ROOT / "configs" / f"mnist-{net.replace('-', '')}-pgd.yaml"
        print(f"training the PGD warm start {preset.name} (3 epochs) into {cache} ...", flush=True)
        gls = str(Path(sys.executable).with_name("gls"))
        subprocess.run([gls, "train", str(preset), "--out", str(cache), "--force", "--set", "schedule.epochs=3",
                        "--set", "schedule.lr_milestones=[]", "--set", "data.test_subset=100"],
                       check=True, stdout=subprocess.DEVNULL)
    _, theta, _ = load_model(model)
    return theta


def bound(spec, x, eps, method, C, params) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    return compute_bounds(spec, x, eps, method, C=C, params=params, sides="upper")


def run(net: str, members: int, batch: int, method: str, eps: float, loop_members: int, rate: float,
        device: torch.device, trained: bool) -> Record:
    generator = torch.Generator().manual_seed(0)
    spec = network(net, "mnist")
    theta = pgd_weights(net) if trained else kaiming_uniform(spec, generator)
    population = (theta + 1e-3 * torch.randn(members, spec.num_params, generator=generator)).to(device)
    x, y = inputs(batch, device)
    C = margin_spec(y, 10)
    with torch.no_grad():
        bound(spec, x, eps, method, C, population)  # warm-up: kernel choices are measured here
        synchronize(device)
        reset_peak_memory(device)
        start = time.perf_counter()
        _, upper = bound(spec, x, eps, method, C, population)
        synchronize(device)
        seconds = time.perf_counter() - start
        peak = peak_memory_mb(device)
        loop_throughput = None
        if loop_members > 0:
            looped = min(members, loop_members)
            start = time.perf_counter()
            for member in range(looped):
                module = to_sequential(spec, population[member].cpu()).to(device)
                bound(module, x, eps, method, C, None)
            synchronize(device)
            loop_throughput = looped * batch / (time.perf_counter() - start)
    throughput = members * batch / seconds
    return Record(method, net, "pgd" if trained else "kaiming", members, batch, eps, seconds, throughput,
                  loop_throughput, None if loop_throughput is None else throughput / loop_throughput, peak, rate,
                  float(upper.mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="P in {1,16,64,256} x B in {64,512} on CNN3 and CNN5")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--loop-members", type=int, default=4, help="members timed in the per-member loop")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--skip-grid", action="store_true", help="only the PGPE-step table")
    parser.add_argument("--skip-step", action="store_true", help="only the population/loop grid")
    parser.add_argument("--step-population", type=int, default=256, help="P of the PGPE-step table")
    parser.add_argument("--json", type=Path, help="write the records and kernel choices as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    chosen = tuple(args.methods.split(","))
    grid = DEFAULT_GRID
    if args.full:
        grid = [(net, p, b, METHODS) for net in ("cnn3", "cnn5") for p in (1, 16, 64, 256) for b in (64, 512)]
    rate = matmul_gflops(device)
    print(f"float32 matmul (2048^3): {rate:.1f} GFLOP/s on {device} ({torch.get_num_threads()} CPU threads)")
    records: list[Record] = []
    if not args.skip_grid:
        print(f"{'method':<12}{'net':<6}{'P':>5}{'B':>5}{'member-samples/s':>18}{'loop':>10}{'pop/loop':>9}"
              f"{'peak MB':>9}")
        for net, members, batch, methods in grid:
            for method in (m for m in methods if m in chosen):
                r = run(net, members, batch, method, args.eps, args.loop_members, rate, device, trained=False)
                records.append(r)
                print(f"{r.method:<12}{r.net:<6}{r.P:>5}{r.B:>5}{r.member_samples_per_s:>18.0f}"
                      f"{r.loop_member_samples_per_s or 0:>10.0f}{r.speedup or 0:>8.1f}x{r.peak_mem_mb:>9.0f}",
                      flush=True)
    if not args.skip_step:
        print(f"\nPGPE step on PGD-trained weights (upper bounds of the margins, eps {args.eps})")
        print(f"{'method':<12}{'net':<11}{'P':>5}{'B':>5}{'s / step':>10}{'member-samples/s':>18}{'peak MB':>9}")
        for net, members, batch, method in STEP_GRID:
            if method not in chosen:
                continue
            r = run(net, args.step_population or members, batch, method, args.eps, 0, rate, device, trained=True)
            records.append(r)
            print(f"{r.method:<12}{r.net:<11}{r.P:>5}{r.B:>5}{r.seconds:>10.2f}{r.member_samples_per_s:>18.0f}"
                  f"{r.peak_mem_mb:>9.0f}", flush=True)
    print("\nkernel choices (seconds per candidate, measured on first use)")
    for choice in kernels.choices():
        timings = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in choice["seconds"].items())
        print(f"  {choice['operation']:<18}{choice['chosen']:<12}{choice['key']}  [{timings}]")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "matmul_gflops": rate,
                                         "records": [asdict(r) for r in records], "kernels": kernels.choices()},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
