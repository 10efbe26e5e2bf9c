"""Evaluation: accuracies are ordered, agree at eps = 0, follow relaxation tightness and catch unsound bounds."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits

import gls_core
from gls_core import evaluation
from gls_core.evaluation import (
    EvalResult,
    SoundnessError,
    certified_accuracy_curve,
    certify,
    evaluate,
    tightness_auc,
)
from gls_core.nets import NetSpec

METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly", "crown", "alpha-crown")

Setup = tuple[NetSpec, torch.Tensor, torch.Tensor, torch.Tensor]


def quick(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
          **options: Any) -> EvalResult:
    """evaluate() with a short attack: 10 PGD steps, 2 restarts."""
    return evaluate(spec, theta, x, y, eps, pgd_steps=10, pgd_restarts=2, **options)


@pytest.fixture(scope="module")
def setup() -> Setup:
    """fc-32x32 after 300 Adam steps on 1,400 sklearn digits ([N, 1, 8, 8] / 16); the other 397 are returned."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=generator)
    x, y = x[order], y[order]
    spec = gls_core.network("fc-32x32", "digits")
    theta = gls_core.kaiming_uniform(spec, generator).requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=1e-2)
    for _ in range(300):
        batch = torch.randint(0, 1400, (128,), generator=generator)
        loss = gls_core.standard_loss(gls_core.forward(spec, theta, x[batch]), y[batch]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return spec, theta.detach(), x[1400:], y[1400:]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_certified_below_adversarial_below_natural(setup: Setup, method: str, eps: float) -> None:
    spec, theta, x, y = setup
    result = quick(spec, theta, x, y, eps, method=method, batch_size=128)
    assert result.n == 397 and result.method == method and result.eps == eps
    assert 0.0 <= result.certified_acc <= result.adversarial_acc <= result.natural_acc <= 1.0
    assert result.natural_acc > 0.9
    assert result.adversarial_acc < result.natural_acc  # the attack finds something at these radii
    assert result.certified_acc > 0 or method == "ibp"


@pytest.mark.parametrize("method", METHODS)
def test_zero_eps_makes_all_three_equal(setup: Setup, method: str) -> None:
    spec, theta, x, y = setup
    result = quick(spec, theta, x, y, 0.0, method=method)
    assert result.certified_acc == result.adversarial_acc == result.natural_acc > 0.9


@pytest.mark.parametrize(("loose", "tight"), [("ibp", "hbox"), ("deeppoly", "alpha-crown")])
def test_tighter_relaxation_certifies_a_superset(setup: Setup, loose: str, tight: str) -> None:
    """Per sample: HBox is never looser than IBP; alpha-CROWN starts at DeepPoly and keeps its best bound."""
    spec, theta, x, y = setup
    for eps in (0.01, 0.03, 0.05):
        weak = certify(spec, theta, x, y, eps, loose, alpha_steps=5)
        strong = certify(spec, theta, x, y, eps, tight, alpha_steps=5)
        assert (strong >= weak).all()
    assert strong.sum() > weak.sum() or loose == "deeppoly"


def test_result_serialises_to_the_documented_keys(setup: Setup) -> None:
    spec, theta, x, y = setup
    result = quick(spec, theta, x, y, 0.02, method="ibp")
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data) == {"natural_acc", "adversarial_acc", "certified_acc", "n", "method", "eps"}
    assert EvalResult(**data) == result


def test_deterministic_and_progress_reports_do_not_change_the_result(setup: Setup) -> None:
    spec, theta, x, y = setup
    first = quick(spec, theta, x, y, 0.05, method="deeppoly", seed=3)
    done: list[int] = []
    assert quick(spec, theta, x, y, 0.05, method="deeppoly", seed=3, progress=done.append) == first
    assert done and done[-1] == x.shape[0] and done == sorted(done), done
    with torch.no_grad():  # callers may evaluate under no_grad; PGD still gets its input gradients
        assert quick(spec, theta, x, y, 0.05, method="deeppoly", seed=3) == first


def test_soundness_check_runs_on_every_batch(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bound that wrongly certifies everything in the last batch only must be caught there."""
    spec, theta, x, y = setup
    real = evaluation.compute_bounds
    calls: list[int] = []

    def unsound_in_last_batch(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        lower, upper = real(*args, **kwargs)
        calls.append(upper.shape[0])
        if len(calls) == 4:  # 397 samples in batches of 100: the fourth is the last
            return lower, torch.full_like(upper, -1.0)
        return lower, upper

    monkeypatch.setattr(evaluation, "compute_bounds", unsound_in_last_batch)
    with pytest.raises(SoundnessError, match="soundness bug") as raised:
        quick(spec, theta, x, y, 0.1, method="ibp", batch_size=100)
    assert isinstance(raised.value, RuntimeError) and calls == [100, 100, 100, 97]


@pytest.mark.parametrize("method", ["ibp", "deeppoly", "alpha-crown"])
def test_curve_is_non_increasing_and_starts_at_natural_accuracy(setup: Setup, method: str) -> None:
    spec, theta, x, y = setup
    radii = [0.0, 0.01, 0.02, 0.04, 0.08]
    curve = certified_accuracy_curve(spec, theta, x, y, radii, method, alpha_steps=5)
    assert len(curve) == len(radii) and all(0.0 <= c <= 1.0 for c in curve)
    assert all(a >= b for a, b in zip(curve, curve[1:]))
    assert curve[0] == quick(spec, theta, x, y, 0.0, method="ibp").natural_acc
    shuffled = [radii[i] for i in (3, 0, 4, 1, 2)]
    assert certified_accuracy_curve(spec, theta, x, y, shuffled, method, alpha_steps=5) == [
        curve[i] for i in (3, 0, 4, 1, 2)]


def test_tightness_auc_lies_in_unit_interval_and_orders_relaxations(setup: Setup) -> None:
    spec, theta, x, y = setup
    auc = {m: tightness_auc(spec, theta, x, y, m, 0.06, points=7, alpha_steps=5)
           for m in ("ibp", "hbox", "deeppoly", "alpha-crown")}
    natural = quick(spec, theta, x, y, 0.0, method="ibp").natural_acc
    assert all(0.0 <= value <= natural for value in auc.values())
    assert auc["hbox"] > auc["ibp"] and auc["alpha-crown"] >= auc["deeppoly"]
    radii = [0.01 * i for i in range(7)]
    curve = certified_accuracy_curve(spec, theta, x, y, radii, "hbox")
    trapezoid = sum((a + b) / 2 * 0.01 for a, b in zip(curve, curve[1:])) / 0.06
    assert auc["hbox"] == pytest.approx(trapezoid)


def test_validation(setup: Setup) -> None:
    spec, theta, x, y = setup
    with pytest.raises(ValueError, match="eps"):
        quick(spec, theta, x, y, -0.1)
    with pytest.raises(ValueError, match="method"):
        quick(spec, theta, x, y, 0.1, method="zonotope")
    with pytest.raises(ValueError, match="batch_size"):
        quick(spec, theta, x, y, 0.1, batch_size=0)
    with pytest.raises(ValueError, match="max_eps"):
        tightness_auc(spec, theta, x, y, "ibp", 0.0)
    with pytest.raises(ValueError, match="radii"):
        certified_accuracy_curve(spec, theta, x, y, [], "ibp")
    with pytest.raises(ValueError, match=r"theta: must have shape \[\d+\] \(the \d+ parameters of "):
        quick(spec, theta.expand(2, -1), x, y, 0.1)
