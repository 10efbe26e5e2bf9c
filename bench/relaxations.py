"""Throughput of every relaxation on a population, side by side with a per-member loop, plus the PGPE step.

    python bench/relaxations.py [--full] [--device cuda] [--json FILE] [--skip-step] [--skip-grid]
    python bench/relaxations.py --profile [--methods deeppoly,...] [--profile-population P] [--json FILE]

Grid: for each (method, net, P, B) with kaiming weights, member-samples per second of the population
call (upper bounds of the margins, as the robust loss and certification ask), the same for our own
per-member loop (each member's weights loaded into an ``nn.Sequential`` and bounded alone, timed on a
few members), the ratio and peak resident memory (CPU) or allocated memory (CUDA). The float32 matmul
rate of the device, measured at the start, says how fast the machine was during the run.

Step: the bounds time of one PGPE step on PGD-trained weights (the workload the paper trains with:
P = 256, B = 512 on CNN3-tiny and CNN3), and the RGS case on CNN5 (P = 2) and one network. The PGD
warm starts are trained once by the project's own presets (3 epochs) and cached in
``$GLS_BENCH_CACHE`` (default ``~/.cache/gls/bench``). The kernel choices made are printed last.

Profile (``--profile``, instead of the tables): the step's cases, each after a warm-up call, with the
engine's functions wrapped at run time; a table per case of the exclusive time per (stage, layer,
operation), its share, the FLOPs of the step-by-step formulation and the rate against the matmul rate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gls_core import compute_bounds, kaiming_uniform, margin_spec, network, relaxations, to_sequential
from gls_core.bounds import alpha_crown, backsub, ibp, kernels, layerwise, methods, rules, slope_gradients
from gls_core.bounds.types import Box
from gls_core.data import load_mnist
from gls_core.nets.spec import Conv2d, Flatten, Linear, NetSpec, ReLU
from gls_core.training import load_model

METHODS = tuple(record.name for record in relaxations.records())
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
    ("cnn3-tiny", 256, 512, relaxations.ALPHA_CROWN),
    ("cnn3-tiny", 256, 512, "crown-ibp"),
    ("cnn3-tiny", 256, 512, "ibp"),
    ("cnn3", 256, 512, "deeppoly"),
    ("cnn3", 256, 512, "crown-ibp"),
]


@dataclass
class Measurement:
    """One timed call of the bounds: which relaxation, network, weights, population, batch and radius."""

    method: str
    net: str
    weights: str
    P: int
    B: int
    eps: float
    seconds: float


@dataclass
class Record(Measurement):
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


def case(net: str, members: int, batch: int, device: torch.device, trained: bool
         ) -> tuple[NetSpec, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(spec, population P x D, inputs, margin specification) of one benchmark case."""
    generator = torch.Generator().manual_seed(0)
    spec = network(net, "mnist")
    theta = pgd_weights(net) if trained else kaiming_uniform(spec, generator)
    population = (theta + 1e-3 * torch.randn(members, spec.num_params, generator=generator)).to(device)
    x, y = inputs(batch, device)
    return spec, population, x, margin_spec(y, 10)


def run(net: str, members: int, batch: int, method: str, eps: float, loop_members: int, rate: float,
        device: torch.device, trained: bool) -> Record:
    spec, population, x, C = case(net, members, batch, device, trained)
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


# --- --profile: where the time of one step goes ------------------------------------------------------------------
#
# The engine's functions are wrapped at run time (layer rules, the fused last steps, the back-substitution,
# relaxations, alpha-CROWN's slope step) and every call's exclusive wall time is summed per (stage, layer,
# operation). FLOPs are those of the step-by-step formulation (a transposed convolution at its kernel size, a
# concretisation as two dot products per row), whatever kernel ran, so the rate reads against the floor.

Arguments = dict[str, Any]
Label = Callable[[Arguments], tuple[str, str]]
Flops = Callable[[Arguments, Any], float]
ARITHMETIC_OPS = ("interval", "backward", "relax+conv", "relax+concretize", "concretize", "forward at x*",
                  "relax+dual at x*", "spec interval")


@dataclass
class ProfileRow:
    """Exclusive wall time of one operation at one layer in one stage, summed over its calls, and its FLOPs."""

    stage: str
    layer: str
    op: str
    calls: int
    seconds: float
    flops: float


@dataclass
class Profile(Measurement):
    """``seconds``: the profiled call; ``plain_seconds``: the same call without the wrappers."""

    plain_seconds: float
    matmul_gflops: float
    rows: list[ProfileRow]

    @property
    def other(self) -> float:
        """Time inside the call but in no wrapped operation (input box, chunking, concatenation)."""
        return self.seconds - sum(row.seconds for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "other_seconds": self.other}


class Profiler:
    """Sums the exclusive time of the wrapped functions' calls per (stage, layer, operation).

    Each open call keeps the time of the wrapped calls it makes, and subtracts it from its own, so nested
    wrappers count every second once. Inside an opaque call (a last step whose kernel candidates call other
    wrapped functions) nothing more is recorded: the step is one row with its time and FLOPs.
    """

    def __init__(self, spec: NetSpec, synchronize: Callable[[], None] = lambda: None) -> None:
        self.spec = spec
        self.synchronize = synchronize
        self._open: list[list[float]] = []  # per open call: seconds spent in the wrapped calls it made
        self._stages: list[str] = []
        self._opaque = False
        self._totals: dict[tuple[str, str, str], list[float]] = {}  # key -> [calls, seconds, flops]

    def rows(self) -> list[ProfileRow]:
        rows = [ProfileRow(*key, int(calls), seconds, flops) for key, (calls, seconds, flops) in self._totals.items()]
        return sorted(rows, key=lambda row: -row.seconds)

    def wrap(self, fn: Callable[..., Any], label: Label, flops: Flops | None = None,
             stage: Callable[[Arguments], str] | None = None, opaque: bool = False) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._opaque:
                return fn(*args, **kwargs)
            arguments = signature.bind(*args, **kwargs).arguments
            if stage is not None:
                self._stages.append(stage(arguments))
            key = (self._stages[-1] if self._stages else "-", *label(arguments))
            inner = [0.0]
            self._open.append(inner)
            self._opaque = opaque
            self.synchronize()
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                self.synchronize()
            finally:
                elapsed = time.perf_counter() - start
                self._open.pop()
                self._opaque = False
                if stage is not None:
                    self._stages.pop()
                if self._open:
                    self._open[-1][0] += elapsed
            total = self._totals.setdefault(key, [0, 0.0, 0.0])
            total[0] += 1
            total[1] += elapsed - inner[0]
            total[2] += 0.0 if flops is None else flops(arguments, result)
            return result

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[Profiler]:
        """The wrappers in place of the engine's functions while inside; the originals are put back afterwards."""
        saved: list[tuple[Any, str, Any]] = []
        try:
            for owner, name, wrapped in self._wrappers():
                if isinstance(owner, dict):
                    saved.append((owner, name, owner[name]))
                    owner[name] = wrapped
                else:
                    saved.append((owner, name, getattr(owner, name)))
                    setattr(owner, name, wrapped)
            yield self
        finally:
            for owner, name, original in reversed(saved):
                if isinstance(owner, dict):
                    owner[name] = original
                else:
                    setattr(owner, name, original)

    def _wrappers(self) -> list[tuple[Any, Any, Any]]:
        """(owner, name, wrapper) for every function wrapped: where each is looked up when called."""
        spec, wrap = self.spec, self.wrap
        last = len(spec.layers) - 1
        found: list[tuple[Any, Any, Any]] = []

        def add(owner: Any, name: str, label: Label, flops: Flops | None = None,
                stage: Callable[[Arguments], str] | None = None, opaque: bool = False) -> None:
            original = owner.get(name) if isinstance(owner, dict) else getattr(owner, name, None)
            if original is not None:  # a function the engine no longer has is simply not profiled
                found.append((owner, name, wrap(original, label, flops, stage, opaque)))

        for record in relaxations.records():  # each bound function where compute_bounds looks it up when called
            where, name = record.bound.split(":")
            add(importlib.import_module(where), name, lambda a: ("all", "glue"),
                stage=_constant("ibp" if record.footprint == "activations" else "walk"))
        for layer_type in (Conv2d, Linear, ReLU, Flatten):
            rule = rules.RULES[layer_type]
            found.append((rules.RULES, layer_type, dataclasses.replace(
                rule, interval=wrap(rule.interval, lambda a: (self.layer(a["at"].index), "interval"),
                                    self._interval_flops),
                backward=wrap(rule.backward, lambda a: (self.layer(a["at"].index), "backward"),
                              self._backward_flops))))
        for module in (methods, alpha_crown):
            add(module, "walk", lambda a: ("all", "walk glue"), stage=lambda a: "walk")
            add(module, "deeppoly_relaxation", lambda a: (self.relu(a["bounds"]), "relax"))
            add(module, "backsub_intersect_bounds", lambda a: (self.layer(a["index"]), "intersect"))
        add(methods, "box_relaxation", lambda a: (self.relu(a["bounds"]), "relax"))
        add(methods, "backsub_bounds", lambda a: (self.layer(a["index"]), "merge"))
        add(alpha_crown, "deeppoly_lower_slope", lambda a: (self.relu(a["bounds"]), "relax"))
        add(layerwise, "backsubstitute", lambda a: (self.layer(a["target"]), "rows in, bounds out"),
            stage=lambda a: "final" if a["target"] == last else f"backsub {a['target']}")
        for module in (backsub, slope_gradients):
            add(module, "start_rows", lambda a: (self.layer(a["target"]), "start rows"), self._start_flops)
        add(backsub, "select_rows", lambda a: (self.layer(a["target"]), "select rows"))
        add(backsub, "_relax_then_conv", lambda a: (self.relu_conv(a["conv"]), "relax+conv"), self._relax_conv_flops)
        add(backsub, "_last_relu_step", lambda a: (self.relu_conv(a["conv"]), "relax+concretize"),
            self._last_step_flops, opaque=True)
        add(backsub, "_concretize_through_conv", lambda a: (self.layer(self.index(a["conv"])), "concretize"),
            self._concretize_conv_flops, opaque=True)
        add(backsub, "_concretize", lambda a: ("input", "concretize"),
            lambda a, result: 4.0 * result.numel() * math.prod(a["coeffs"].A.shape[4:]))
        add(alpha_crown, "optimise_slopes", lambda a: ("ReLUs", "init, step, best"), stage=lambda a: "slopes")
        add(alpha_crown, "bounds_and_slope_gradients", lambda a: ("ReLUs", "gradients at x*"),
            stage=lambda a: "slope grad")
        add(slope_gradients, "first_pre_activation_at_corner", lambda a: (self.relu_conv(a["conv"]),
                                                                          "relax+dual at x*"),
            self._dual_flops, opaque=True)
        add(slope_gradients, "_forward", lambda a: (self.layer(a["at"].index), "forward at x*"), self._forward_flops)
        add(ibp, "spec_interval", lambda a: (self.layer(last), "spec interval"), self._spec_interval_flops)
        return found

    # --- labels ---

    def layer(self, index: int) -> str:
        return f"{index} {type(self.spec.layers[index]).__name__}"

    def index(self, layer: Any) -> int:
        return next(i for i, candidate in enumerate(self.spec.layers) if candidate is layer)

    def relu_conv(self, conv: Conv2d) -> str:
        """The ReLU over ``conv`` and ``conv`` itself, as one fused step sees them."""
        index = self.index(conv)
        return f"{index + 1}+{index} ReLU+Conv2d"

    def relu(self, bounds: Box) -> str:
        """The ReLU layer whose input has the shape of ``bounds`` ([P, B, *shape])."""
        shape = tuple(bounds.lower.shape[2:])
        indices = [i for i, layer in enumerate(self.spec.layers) if isinstance(layer, ReLU)
                   and tuple(self.spec.shapes[i]) == shape]
        return f"{'/'.join(map(str, indices)) or '?'} ReLU"

    # --- FLOPs of the step-by-step formulation ---

    def _taps(self, layer: Any) -> int:
        """Multiply-adds per output of an affine layer."""
        return layer.in_channels * layer.kernel**2 if isinstance(layer, Conv2d) else int(layer.in_features)

    def _interval_flops(self, a: Arguments, result: Box) -> float:
        layer = a["at"].layer
        return 4.0 * result.lower.numel() * self._taps(layer) if layer.affine else 0.0  # centre and radius passes

    def _backward_flops(self, a: Arguments, result: Any) -> float:
        layer, A = a["at"].layer, a["coeffs"].A
        if isinstance(layer, (Conv2d, Linear)):
            return 2.0 * A.numel() * (self._taps(layer) + 1)  # the transposed layer, and the bias
        if isinstance(layer, ReLU):
            relaxation = a["relaxations"][a["at"].index]
            offsets = (relaxation.upper_offset is not None) + (relaxation.lower_offset is not None)
            return (4.0 + 2 * offsets) * result.A.numel()
        return 0.0

    def _start_flops(self, a: Arguments, result: Any) -> float:
        layer, C = self.spec.layers[a["target"]], a.get("C")
        if not isinstance(layer, Linear) or C is None:
            return 0.0
        return 2.0 * a["params"].shape[0] * C.numel() * layer.in_features  # C W per member

    def _window(self, a: Arguments, conv: Conv2d) -> int:
        """Pixels a row of the last step reads on the input: the whole map, or its receptive field."""
        coeffs = a["coeffs"]
        if coeffs.windows is None:
            return math.prod(a["box"].lower.shape[1:])
        height, width = coeffs.A.shape[-2:]
        return conv.in_channels * ((height - 1) * conv.stride + conv.kernel) * ((width - 1) * conv.stride + conv.kernel)

    def _relax_conv_flops(self, a: Arguments, result: Any) -> float:
        rows, per_row = math.prod(result.A.shape[:4]), math.prod(a["coeffs"].A.shape[4:])
        return float(rows * per_row * (4 + 2 * self._taps(a["conv"]) + 2))  # relax, transposed conv, bias

    def _last_step_flops(self, a: Arguments, result: torch.Tensor) -> float:
        per_row = math.prod(a["coeffs"].A.shape[4:])
        conv = a["conv"]
        return float(result.numel() * (per_row * (4 + 2 * self._taps(conv) + 2) + 4 * self._window(a, conv)))

    def _concretize_conv_flops(self, a: Arguments, result: torch.Tensor) -> float:
        per_row = math.prod(a["coeffs"].A.shape[4:])
        conv = a["conv"]
        return float(result.numel() * (per_row * (2 * self._taps(conv) + 2) + 4 * self._window(a, conv)))

    def _dual_flops(self, a: Arguments, result: torch.Tensor | None) -> float:
        if result is None:
            return 0.0
        rows, per_row = math.prod(result.shape[:4]), math.prod(result.shape[4:])
        # relax, transposed conv to the input, the corner, the convolution forward again
        return float(rows * (per_row * (4 + 4 * self._taps(a["conv"])) + 2 * self._window(a, a["conv"])))

    def _forward_flops(self, a: Arguments, result: torch.Tensor) -> float:
        layer = a["at"].layer
        return 2.0 * result.numel() * self._taps(layer) if layer.affine else 0.0

    def _spec_interval_flops(self, a: Arguments, result: Box) -> float:
        layer = self.spec.layers[-1]
        assert isinstance(layer, Linear)
        members, batch = a["params"].shape[0], a["box"].lower.shape[-2]
        C = a.get("C")
        rows = layer.out_features if C is None else C.shape[1]
        outputs, inputs_ = layer.out_features, layer.in_features
        return 2.0 * members * batch * (outputs * inputs_ + rows * outputs + rows * inputs_)


def print_kernel_choices() -> None:
    print("\nkernel choices (seconds per candidate, measured on first use)")
    for choice in kernels.choices():
        timings = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in choice["seconds"].items())
        print(f"  {choice['operation']:<18}{choice['chosen']:<12}{choice['key']}  [{timings}]")


def _constant(value: str) -> Callable[[Arguments], str]:
    return lambda arguments: value


def profile_case(net: str, members: int, batch: int, method: str, eps: float, rate: float, device: torch.device,
                 trained: bool) -> Profile:
    """One step's bounds profiled, after a warm-up call (kernel choices are timed on first use) and a plain call."""
    spec, population, x, C = case(net, members, batch, device, trained)
    with torch.no_grad():
        bound(spec, x, eps, method, C, population)
        synchronize(device)
        start = time.perf_counter()
        bound(spec, x, eps, method, C, population)
        synchronize(device)
        plain = time.perf_counter() - start
        profiler = Profiler(spec, lambda: synchronize(device))
        with profiler.installed():
            start = time.perf_counter()
            bound(spec, x, eps, method, C, population)
            synchronize(device)
            seconds = time.perf_counter() - start
    return Profile(method, net, "pgd" if trained else "kaiming", members, batch, eps, seconds, plain, rate,
                   profiler.rows())


def format_profile(profile: Profile) -> str:
    """The profile as a table, largest item first, with the time outside every wrapped operation and the total."""
    p = profile
    lines = [f"{p.method} {p.net} P={p.P} B={p.B} ({p.weights} weights, eps {p.eps}): profiled call "
             f"{p.seconds:.3f} s (without the wrappers {p.plain_seconds:.3f} s); matmul {p.matmul_gflops:.1f} GFLOP/s",
             f"{'stage':<12}{'layer':<18}{'op':<22}{'calls':>7}{'seconds':>9}{'share %':>8}{'GFLOP':>9}"
             f"{'GFLOP/s':>9}{'% matmul':>9}"]

    def line(stage: str, layer: str, op: str, calls: int | str, seconds: float, flops: float) -> str:
        share = 100 * seconds / p.seconds if p.seconds > 0 else 0.0
        rate = flops / seconds / 1e9 if flops > 0 and seconds > 0 else None
        rate_text = "-" if rate is None else f"{rate:.1f}"
        matmul = "-" if rate is None else f"{100 * rate / p.matmul_gflops:.1f}"
        flops_text = "-" if flops <= 0 else f"{flops / 1e9:.3f}"
        return (f"{stage:<12}{layer:<18}{op:<22}{calls:>7}{seconds:>9.3f}{share:>8.1f}{flops_text:>9}"
                f"{rate_text:>9}{matmul:>9}")

    for row in p.rows:
        lines.append(line(row.stage, row.layer, row.op, row.calls, row.seconds, row.flops))
    lines.append(line("other", "-", "outside wrapped ops", "", p.other, 0.0))
    lines.append(line("total", "", "", sum(row.calls for row in p.rows), p.seconds,
                      sum(row.flops for row in p.rows)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="P in {1,16,64,256} x B in {64,512} on CNN3 and CNN5")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--loop-members", type=int, default=4, help="members timed in the per-member loop")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--skip-grid", action="store_true", help="only the PGPE-step table")
    parser.add_argument("--skip-step", action="store_true", help="only the population/loop grid")
    parser.add_argument("--step-population", type=int, default=256, help="P of the PGPE-step table")
    parser.add_argument("--json", type=Path, help="write the records (or profiles) and kernel choices as JSON")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the tables: the PGPE step's time per stage, layer and operation, its FLOPs "
                             "and the rate against the matmul rate (the step's cases chosen by --methods)")
    parser.add_argument("--profile-population", type=int, default=256, help="P of the profiled step")
    parser.add_argument("--profile-batch", type=int, help="B of the profiled step (default: the step's)")
    parser.add_argument("--profile-nets", default=",".join(dict.fromkeys(net for net, *_ in STEP_GRID)),
                        help="networks of the step's cases to profile")
    parser.add_argument("--profile-weights", choices=("pgd", "kaiming"), default="pgd")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    chosen = tuple(args.methods.split(","))
    grid = DEFAULT_GRID
    if args.full:
        grid = [(net, p, b, METHODS) for net in ("cnn3", "cnn5") for p in (1, 16, 64, 256) for b in (64, 512)]
    rate = matmul_gflops(device)
    print(f"float32 matmul (2048^3): {rate:.1f} GFLOP/s on {device} ({torch.get_num_threads()} CPU threads)")
    if args.profile:
        nets = args.profile_nets.split(",")
        profiles = []
        for net, _, batch, method in STEP_GRID:
            if method not in chosen or net not in nets:
                continue
            profile = profile_case(net, args.profile_population, args.profile_batch or batch, method, args.eps,
                                   rate, device, trained=args.profile_weights == "pgd")
            profiles.append(profile)
            print(f"\n{format_profile(profile)}", flush=True)
        print_kernel_choices()
        if args.json:
            args.json.write_text(json.dumps({"device": str(device), "matmul_gflops": rate, "threads":
                                             torch.get_num_threads(), "profiles": [p.to_json() for p in profiles],
                                             "kernels": kernels.choices()}, indent=2, default=str))
        return
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
    print_kernel_choices()
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "matmul_gflops": rate,
                                         "records": [asdict(r) for r in records], "kernels": kernels.choices()},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
