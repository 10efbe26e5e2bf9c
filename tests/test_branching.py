"""Branching rules: the babsr score is what an intercept costs the final bound, and the score-based rules split
the neuron that matters where the widest triangle does not."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from cli_runner import run_cli
from torch import nn

from gls_core import forward, kaiming_uniform
from gls_core.bounds.layerwise import backsub_intersect_bounds, final_bounds, walk
from gls_core.bounds.relu import deeppoly_relaxation
from gls_core.bounds.types import Box, ReluRelaxation
from gls_core.nets import Conv2d, Flatten, Linear, NetSpec, ReLU
from gls_core.nets.convert import from_sequential
from gls_core.verify import Property, VerifyOptions, robustness
from gls_core.verify.branching import BRANCHING, DEFAULT_BRANCHING, Problem, intercept_scores
from gls_core.verify.subdomains import bound_subdomains, no_splits


@dataclass
class Domain:
    pre_relu: dict[int, Box]
    splits: dict[int, torch.Tensor]
    lower: torch.Tensor


def root_domain(spec: NetSpec, theta: torch.Tensor, prop: Property) -> Domain:
    bounded = bound_subdomains(spec, theta, prop, no_splits(spec), "deeppoly")
    return Domain({i: Box(b.lower[0], b.upper[0]) for i, b in bounded.pre_relu.items()},
                  {i: s[0] for i, s in no_splits(spec).items()}, bounded.lower[0])


def one_neuron_matters() -> tuple[NetSpec, torch.Tensor, Property]:
    """x in [-1, 1]; hidden z_j = ReLU(w_j x), w = (1, 1, 2); the row 0.9 - z_0 depends on neuron 0 only.

    Neuron 2 has the widest triangle (height 1 against 0.5), but splitting it cannot move the bound.
    """
    hidden, out = nn.Linear(1, 3), nn.Linear(3, 2)
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[1.0], [1.0], [2.0]]))
        hidden.bias.zero_()
        out.weight.copy_(torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        out.bias.copy_(torch.tensor([0.9, 0.0]))
    spec, theta = from_sequential(nn.Sequential(hidden, nn.ReLU(), out), (1,))
    prop = Property(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                    torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    return spec, theta.double(), prop


def test_score_based_rules_split_the_neuron_the_property_depends_on() -> None:
    spec, theta, prop = one_neuron_matters()
    domain = root_domain(spec, theta, prop)
    assert float(domain.lower[0]) < 0  # the row is open
    problem = Problem(spec, theta, prop)
    relu = next(iter(domain.pre_relu))
    assert BRANCHING["widest"]([domain], problem) == [(relu, 2)]
    assert BRANCHING["babsr"]([domain], problem) == [(relu, 0)]
    assert BRANCHING["fsb"]([domain], problem) == [(relu, 0)]
    scores = intercept_scores(problem, [domain])[relu][0]
    torch.testing.assert_close(scores, torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))


def small_cnn(side: int, channels: int, hidden: int, seed: int, eps: float) -> tuple[NetSpec, torch.Tensor, Property]:
    """A two-layer convolutional network with random weights and the robustness property of its prediction."""
    features = channels * (side - 2) ** 2
    spec = NetSpec((1, side, side), (Conv2d(1, channels, 3, 1, 0), ReLU(), Flatten(), Linear(features, hidden), ReLU(),
                                     Linear(hidden, 4 if side > 4 else 3)))
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(seed)).double()
    x = torch.rand(1, side, side, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    label = int(forward(spec, theta.view(1, -1), x.unsqueeze(0))[0, 0].argmax())
    return spec, theta, robustness(spec, x, label, eps)


def test_the_babsr_score_is_the_bound_gained_by_removing_that_intercept() -> None:
    spec, theta, prop = small_cnn(5, 3, 10, 11, 0.8)
    domain = root_domain(spec, theta, prop)
    open_rows = domain.lower <= 0
    assert bool(open_rows.any())
    scores = intercept_scores(Problem(spec, theta, prop), [domain])
    params = theta.view(1, -1)
    box = Box(prop.lower.unsqueeze(0), prop.upper.unsqueeze(0))
    state = walk(spec, params, box, deeppoly_relaxation, backsub_intersect_bounds)
    C = prop.C.unsqueeze(0)

    def open_sum(relaxations: dict[int, ReluRelaxation]) -> float:
        lower = final_bounds(spec, params, state, C, relaxations, sides="lower").lower[0, 0] + prop.d
        return float(lower[open_rows].sum())

    base = open_sum(state.relaxations)
    checked = 0
    for index, layer_scores in scores.items():
        for neuron in (layer_scores[0] > 0).nonzero().view(-1)[:4].tolist():
            relaxation = state.relaxations[index]
            assert relaxation.upper_offset is not None
            offset = relaxation.upper_offset.clone()
            offset.view(-1)[neuron] = 0
            changed = dict(state.relaxations)
            changed[index] = ReluRelaxation(relaxation.lower_slope, relaxation.lower_offset,
                                            relaxation.upper_slope, offset)
            assert open_sum(changed) - base == pytest.approx(float(layer_scores[0, neuron]), rel=1e-9, abs=1e-12)
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("rule", sorted(BRANCHING))
def test_every_rule_picks_an_unstable_unsplit_neuron_of_each_subdomain(rule: str) -> None:
    spec, theta, prop = small_cnn(4, 2, 6, 2, 0.4)
    problem = Problem(spec, theta, prop)
    domains = [root_domain(spec, theta, prop)]
    for _ in range(3):  # three rounds of splitting: the chosen neurons are split in the children
        children = []
        for domain, (layer, neuron) in zip(domains, BRANCHING[rule](domains, problem)):
            bounds = domain.pre_relu[layer]
            assert float(bounds.lower.reshape(-1)[neuron]) < 0 < float(bounds.upper.reshape(-1)[neuron])
            assert int(domain.splits[layer].reshape(-1)[neuron]) == 0
            for sign in (1, -1):
                splits = {i: s.clone() for i, s in domain.splits.items()}
                splits[layer].view(-1)[neuron] = sign
                bounded = bound_subdomains(spec, theta, prop, {i: s.unsqueeze(0) for i, s in splits.items()},
                                           "deeppoly")
                pre = {i: Box(b.lower[0], b.upper[0]) for i, b in bounded.pre_relu.items()}
                open_neurons = any(bool(((b.lower < 0) & (b.upper > 0)).any()) for b in pre.values())
                if not bool(bounded.empty[0]) and open_neurons:
                    children.append(Domain(pre, splits, bounded.lower[0]))
        domains = children
    assert len(domains) >= 4


def test_gls_verify_names_every_rule_and_the_default() -> None:
    shown = run_cli("verify", "--help", env={"COLUMNS": "250"}).stdout
    row = next(line for line in shown.splitlines() if "--branching" in line)
    assert all(rule in row for rule in BRANCHING), row
    assert f"{DEFAULT_BRANCHING} (the default)" in row
    assert VerifyOptions().branching == DEFAULT_BRANCHING
