"""PGD: stays in the region, is reproducible, reaches known worst cases and leaves theta alone."""

from __future__ import annotations

import pytest
import torch
from servers import shared_data_dir

import gls_core
from gls_core.attacks import attack_loss, logit_margin, pgd_attack
from gls_core.data import load_mnist
from gls_core.nets import NetSpec, fully_connected

DATA = shared_data_dir()


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_mnist("test", root=DATA)
    return x[:2500], y[:2500]


@pytest.fixture(scope="module")
def trained(mnist: tuple[torch.Tensor, torch.Tensor]) -> tuple[NetSpec, torch.Tensor]:
    """cnn3-tiny after 150 Adam steps on 2,000 MNIST test images (the rest is held out)."""
    x, y = mnist
    spec = gls_core.network("cnn3-tiny", "mnist")
    generator = torch.Generator().manual_seed(0)
    theta = gls_core.kaiming_uniform(spec, generator).requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=2e-2)
    for _ in range(150):
        batch = torch.randint(0, 2000, (128,), generator=generator)
        loss = gls_core.standard_loss(gls_core.forward(spec, theta, x[batch]), y[batch]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return spec, theta.detach()


def held_out(mnist: tuple[torch.Tensor, torch.Tensor], size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist
    return x[2000 : 2000 + size], y[2000 : 2000 + size]


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_stays_in_ball_and_unit_box(trained: tuple[NetSpec, torch.Tensor], mnist: tuple[torch.Tensor, torch.Tensor],
                                    loss: str) -> None:
    spec, theta = trained
    x, y = held_out(mnist, 64)
    for eps in (0.1, torch.linspace(0.0, 0.3, 64)):
        adv = pgd_attack(spec, theta, x, y, eps, steps=10, restarts=2, generator=torch.Generator().manual_seed(1),
                         loss=loss)  # type: ignore[arg-type]
        radius = torch.as_tensor(eps).expand(64).view(-1, 1, 1, 1)
        assert adv.shape == x.shape and adv.dtype == x.dtype
        assert ((adv - x).abs() <= radius + 1e-6).all()
        assert (adv >= 0).all() and (adv <= 1).all()
    assert torch.equal(adv[0], x[0])  # eps = 0: the region is the clean input


def test_zero_eps_and_zero_steps(trained: tuple[NetSpec, torch.Tensor], mnist: tuple[torch.Tensor, torch.Tensor]
                                 ) -> None:
    spec, theta = trained
    x, y = held_out(mnist, 16)
    assert torch.equal(pgd_attack(spec, theta, x, y, 0.0, steps=5), x)
    start = pgd_attack(spec, theta, x, y, 0.1, steps=0, generator=torch.Generator().manual_seed(3))
    assert ((start - x).abs() <= 0.1 + 1e-6).all() and not torch.equal(start, x)


def test_deterministic_for_a_seeded_generator(trained: tuple[NetSpec, torch.Tensor],
                                              mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec, theta = trained
    x, y = held_out(mnist, 64)

    def attack(seed: int) -> torch.Tensor:
        return pgd_attack(spec, theta, x, y, 0.1, steps=8, restarts=3, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(attack(7), attack(7))
    assert not torch.equal(attack(7), attack(8))


def linear_binary(seed: int) -> tuple[NetSpec, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-class linear classifier on 8x8 inputs, some pixels at 0 or 1, per-input radii."""
    spec = fully_connected((1, 8, 8), [], 2)
    generator = torch.Generator().manual_seed(seed)
    theta = gls_core.kaiming_uniform(spec, generator)
    x = torch.rand(64, 1, 8, 8, generator=generator)
    x = torch.where(torch.rand(x.shape, generator=generator) < 0.2, (x > 0.5).to(x.dtype), x)
    y = torch.randint(0, 2, (64,), generator=generator)
    eps = 0.3 * torch.rand(64, generator=generator)
    return spec, theta, x, y, eps


def analytic_worst_margin(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                          eps: torch.Tensor) -> torch.Tensor:
    """max over the region of z_other - z_y for a linear 2-class net: the corner sign(w_other - w_y), clipped."""
    weight, bias = spec.weight(theta.view(1, -1), 1)[0], spec.bias(theta.view(1, -1), 1)[0]
    direction = weight[1 - y] - weight[y]  # [B, 64]
    offset = bias[1 - y] - bias[y]
    flat = x.flatten(1)
    radius = eps.view(-1, 1)
    corner = torch.where(direction > 0, (flat + radius).clamp(max=1), (flat - radius).clamp(min=0))
    return (direction * corner).sum(1) + offset


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_the_analytic_worst_case_of_a_linear_classifier(loss: str, seed: int) -> None:
    spec, theta, x, y, eps = linear_binary(seed)
    worst = analytic_worst_margin(spec, theta, x, y, eps)
    adv = pgd_attack(spec, theta, x, y, eps, steps=10, generator=torch.Generator().manual_seed(seed),
                     loss=loss)  # type: ignore[arg-type]
    expected = worst if loss == "margin" else torch.nn.functional.softplus(worst)  # 2-class CE = softplus(margin)
    found = attack_loss(spec, theta, adv, y, loss)  # type: ignore[arg-type]
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)
    exists = worst > 0
    assert exists.any() and (logit_margin(gls_core.forward(spec, theta, adv)[0], y)[exists] > 0).all()


def test_stronger_than_random_noise(trained: tuple[NetSpec, torch.Tensor],
                                    mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec, theta = trained
    x, y = held_out(mnist)
    generator = torch.Generator().manual_seed(0)
    eps = 0.1
    noise = (x + eps * (2 * torch.rand(x.shape, generator=generator) - 1)).clamp(0, 1)
    adv = pgd_attack(spec, theta, x, y, eps, steps=20, generator=generator)
    clean_correct = attack_loss(spec, theta, x, y, "margin") < 0
    noise_fooled = attack_loss(spec, theta, noise, y, "margin") >= 0
    pgd_fooled = attack_loss(spec, theta, adv, y, "margin") >= 0
    assert clean_correct.float().mean() > 0.8  # the fixture's net has learnt something
    assert pgd_fooled.sum() > noise_fooled.sum() + 20
    assert attack_loss(spec, theta, adv, y).mean() > attack_loss(spec, theta, noise, y).mean()


def test_restarts_never_decrease_the_attack(trained: tuple[NetSpec, torch.Tensor],
                                            mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec, theta = trained
    x, y = held_out(mnist)

    def attack(restarts: int, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
        adv = pgd_attack(spec, theta, x, y, 0.04, steps=5, restarts=restarts,
                         generator=torch.Generator().manual_seed(5), loss=loss)  # type: ignore[arg-type]
        return attack_loss(spec, theta, adv, y, loss), attack_loss(spec, theta, adv, y, "margin") >= 0  # type: ignore[arg-type]

    one, _ = attack(1, "margin")
    four, _ = attack(4, "margin")
    assert (four >= one - 1e-6).all() and (four > one + 1e-3).any()
    # Cross-entropy: misclassified beats correct, otherwise the loss never drops.
    ce_one, fooled_one = attack(1, "ce")
    ce_four, fooled_four = attack(4, "ce")
    assert (fooled_four >= fooled_one).all()
    same = fooled_four == fooled_one
    assert (ce_four[same] >= ce_one[same] - 1e-6).all() and fooled_four.sum() >= fooled_one.sum()


def test_leaves_theta_and_grad_mode_alone(trained: tuple[NetSpec, torch.Tensor],
                                          mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec, trained_theta = trained
    x, y = held_out(mnist, 16)
    theta = trained_theta.clone().requires_grad_(True)
    for mode in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with mode():
            before = torch.is_grad_enabled()
            adv = pgd_attack(spec, theta, x, y, 0.1, steps=3, restarts=2)
            assert torch.is_grad_enabled() == before
        assert theta.grad is None and not adv.requires_grad
    # The training step's own graph through theta is untouched by an attack in between.
    loss = gls_core.standard_loss(gls_core.forward(spec, theta, x), y).mean()
    pgd_attack(spec, theta, x, y, 0.1, steps=3)
    loss.backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()


def test_step_size_and_validation(trained: tuple[NetSpec, torch.Tensor],
                                  mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec, theta = trained
    x, y = held_out(mnist, 8)
    generator = torch.Generator().manual_seed(0)
    tiny = pgd_attack(spec, theta, x, y, 0.2, steps=0, generator=torch.Generator().manual_seed(0))
    moved = pgd_attack(spec, theta, x, y, 0.2, steps=1, step_size=torch.zeros(8), generator=generator)
    assert torch.equal(tiny, moved)  # zero steps of size zero: the random start itself
    with pytest.raises(ValueError, match="loss"):
        pgd_attack(spec, theta, x, y, 0.1, steps=1, loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="restarts"):
        pgd_attack(spec, theta, x, y, 0.1, steps=1, restarts=0)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(spec, theta, x, y, torch.full((3,), 0.1), steps=1)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(spec, theta, x, y, -0.1, steps=1)
    with pytest.raises(ValueError, match=r"theta: must have shape \[\d+\] \(the \d+ parameters of "):
        pgd_attack(spec, theta.expand(2, -1), x, y, 0.1, steps=1)
    with pytest.raises(ValueError, match=r"y: must have shape \[8\] \(one label per input\)"):
        pgd_attack(spec, theta, x, y[:4], 0.1, steps=1)
