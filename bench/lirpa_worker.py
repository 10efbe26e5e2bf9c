"""auto_LiRPA's side of ``bench/reference.py``: run in auto_LiRPA's own environment, never imports gls_core.

Reads one JSON request per line on stdin and answers one JSON line on stdout, so the benchmark can
alternate the two engines in one run. A request names a case file (``torch.save`` of the layer list,
the state dicts of the members, inputs, specification rows and eps) and a mode:

- ``bounds``: CROWN lower bounds of ``C f(x')`` for the first member, ``repeats`` timed calls after one
  warm-up; answers the seconds of each call and the bounds of the last.
- ``grad``: the RGS step's work per member: the bounds with gradients and ``backward`` of the robust
  loss, for every member in turn (auto_LiRPA bounds one network at a time).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm


def build(layers: list[list]) -> torch.nn.Sequential:
    modules: list[torch.nn.Module] = []
    for kind, *args in layers:
        if kind == "conv":
            modules.append(torch.nn.Conv2d(*args))
        elif kind == "linear":
            modules.append(torch.nn.Linear(*args))
        elif kind == "relu":
            modules.append(torch.nn.ReLU())
        elif kind == "flatten":
            modules.append(torch.nn.Flatten())
        else:
            raise ValueError(f"unknown layer {kind!r}")
    return torch.nn.Sequential(*modules)


def robust_loss(lower: torch.Tensor) -> torch.Tensor:
    """The same loss as GLS's on the margin upper bounds (here the negated lower bounds)."""
    upper = -lower
    zero = torch.zeros_like(upper[:, :1])
    return torch.logsumexp(torch.cat([zero, upper], dim=1), dim=1).mean()


def serve(request: dict) -> dict:
    case = torch.load(request["case"], weights_only=False)
    x, C, eps = case["x"], case["C"], case["eps"]
    networks = []
    for state in case["members"]:  # traced before the clock starts: one bounded module per member
        model = build(case["layers"])
        model.load_state_dict(state)
        networks.append(BoundedModule(model, torch.zeros_like(x[:1]), device="cpu", verbose=0))
    region = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    inputs = BoundedTensor(x, region)
    repeats = int(request.get("repeats", 1))
    seconds: list[float] = []
    lower = None
    if request["mode"] == "bounds":
        with torch.no_grad():
            for call in range(repeats + 1):
                start = time.perf_counter()
                lower, _ = networks[0].compute_bounds(x=(inputs,), C=C, method="CROWN", bound_upper=False)
                if call:
                    seconds.append(time.perf_counter() - start)
    else:
        for call in range(repeats + 1):
            start = time.perf_counter()
            for bounded in networks:
                for parameter in bounded.parameters():
                    parameter.grad = None
                lower, _ = bounded.compute_bounds(x=(inputs,), C=C, method="CROWN", bound_upper=False)
                robust_loss(lower).backward()
            if call:
                seconds.append(time.perf_counter() - start)
    assert lower is not None
    return {"seconds": seconds, "lower": lower.detach().tolist(),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = serve(json.loads(line))
        except Exception as error:  # the benchmark prints it; the worker stays up for the next case
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
