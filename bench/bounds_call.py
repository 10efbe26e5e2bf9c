"""One population bounds call, for timing whole processes against another checkout of the engine.

    python bench/bounds_call.py NET P B METHOD (MODEL.safetensors | kaiming)

Run it under two checkouts (``PYTHONPATH=<checkout>``) with a whole-process timer such as
``hyperfine`` or ``/usr/bin/time -v``, alternating. Engines without one-sided bounds compute both sides.
"""

from __future__ import annotations

import sys

import torch

from gls_core import compute_bounds, kaiming_uniform, margin_spec, network
from gls_core.data import load_mnist
from gls_core.training import load_model


def main() -> None:
    net, members, batch, method, weights = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    if weights == "kaiming":
        spec = network(net, "mnist")
        theta = kaiming_uniform(spec, torch.Generator().manual_seed(0))
    else:
        spec, theta, _ = load_model(weights)
    population = theta + 1e-3 * torch.randn(members, spec.num_params, generator=torch.Generator().manual_seed(1))
    x, y = load_mnist("test")
    x, y = x[:batch], y[:batch]
    with torch.no_grad():
        try:
            _, upper = compute_bounds(spec, x, 0.1, method, C=margin_spec(y, 10), params=population, sides="upper")
        except (TypeError, ValueError):  # an engine without ``sides``
            _, upper = compute_bounds(spec, x, 0.1, method, C=margin_spec(y, 10), params=population)
    print(f"mean upper bound {float(upper.mean()):.6f}")


if __name__ == "__main__":
    main()
