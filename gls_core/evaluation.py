"""Natural, adversarial (PGD) and certified accuracy of one network, and relaxation tightness.

Every sample is judged strictly (see :mod:`gls_core.attacks`): correct means the target logit beats
every other one, certified means every upper bound of y_i - y_t is below 0. A certificate covers
the whole region, the PGD point included, so "certified but broken by PGD" can only come from an
unsound bound: :func:`evaluate` checks it on every batch and raises :class:`SoundnessError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from . import relaxations
from .attacks import logit_margin, pgd_attack, predict_logits
from .bounds import compute_bounds, margin_spec
from .catalog import (
    COMPLETE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMPLETE_TIMEOUT,
    DEFAULT_PGD_RESTARTS,
    DEFAULT_PGD_STEPS,
)
from .catalog import certify_methods as certify_methods
from .errors import InvalidInput
from .losses import certified
from .nets.spec import NetSpec
from .validation import check_count, check_inputs, check_labels, check_params, check_radius
from .verify import VerifyOptions, verify_each


class SoundnessError(RuntimeError):
    """A sample was certified although an attack point in its region is misclassified."""


@dataclass(frozen=True)
class EvalResult:
    """Accuracies as fractions of ``n`` samples, at radius ``eps`` with relaxation ``method``."""

    natural_acc: float
    adversarial_acc: float
    certified_acc: float
    n: int
    method: str
    eps: float

    def to_dict(self) -> dict[str, float | int | str]:
        return {"natural_acc": self.natural_acc, "adversarial_acc": self.adversarial_acc,
                "certified_acc": self.certified_acc, "n": self.n, "method": self.method, "eps": self.eps}


def bound_options(method: str, alpha_steps: int | None = None, options: Mapping[str, Any] | None = None,
                  field: str = "") -> dict[str, Any]:
    """All options of ``method`` at evaluation time: its record's evaluation defaults under ``options``.

    ``alpha_steps`` (the command line's and the config's ``alpha_steps``) sets the ``steps`` of a method
    that has steps; others ignore it.
    """
    record = relaxations.lookup(method, f"{field}.method" if field else "method")
    given = dict(options or {})
    if alpha_steps is not None and any(item.name == "steps" for item in record.options):
        given.setdefault("steps", alpha_steps)
    return record.check(given, field, evaluating=True)


def _check_data(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    check_inputs(spec, x)
    check_labels(y, x.shape[0], spec.num_outputs)
    return check_params(spec, theta, "theta", single=True)[0].detach().to(x.dtype)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    check_count(batch_size, "batch_size")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _certified_batch(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                     method: str, options: dict[str, Any]) -> torch.Tensor:
    """Where the relaxation proves every y_i - y_t < 0 on the region: [B] bool."""
    with torch.no_grad():
        _, upper = compute_bounds(spec, x, eps, method, C=margin_spec(y, spec.num_outputs), params=theta,
                                  sides="upper", **options)
    return certified(upper)


def _verified_batch(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                    timeout: float, seed: int, decided: Callable[[int], None] | None = None) -> torch.Tensor:
    """Where the complete verifier proves robustness within ``timeout`` seconds per input: [B] bool.

    ``decided(i)`` is called after the i-th input (from 0) is decided: inputs can take up to
    ``timeout`` each, so a batch of them is long enough to want progress of its own.
    """
    verified = []
    for index, verdict in enumerate(verify_each(spec, theta, x, y, eps, VerifyOptions(timeout=timeout), seed)):
        verified.append(verdict.status == "verified")
        if decided is not None:
            decided(index)
    return torch.tensor(verified, dtype=torch.bool, device=x.device)


def _report_input(progress: Callable[[int], None], positions: list[int], index: int) -> None:
    """The inputs up to the one at ``positions[index]`` are done (those before it were decided or misclassified)."""
    progress(positions[index] + 1)


def _correct(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logit_margin(predict_logits(spec, theta, x), y) < 0


def _check_sound(cert: torch.Tensor, robust: torch.Tensor, offset: int, method: str, eps: float) -> None:
    broken = (cert & ~robust).nonzero().squeeze(-1)
    if broken.numel():
        samples = (broken + offset).tolist()[:10]
        raise SoundnessError(
            f"soundness bug: {method} certified samples {samples} at eps={eps}, yet they are misclassified "
            "at their clean input or at a PGD point inside the certified region")


def evaluate(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, *,
             method: str = "deeppoly", batch_size: int = DEFAULT_BATCH_SIZE, pgd_steps: int = DEFAULT_PGD_STEPS,
             pgd_restarts: int = DEFAULT_PGD_RESTARTS, alpha_steps: int | None = None, seed: int = 0,
             progress: Callable[[int], None] | None = None,
             complete_timeout: float = DEFAULT_COMPLETE_TIMEOUT, options: Mapping[str, Any] | None = None
             ) -> EvalResult:
    """Natural, PGD-adversarial and certified accuracy of theta on (x, y) at L_inf radius eps.

    Adversarial counts a sample when it is correct on the clean input and on the PGD point
    (``pgd_steps`` steps, ``pgd_restarts`` restarts, cross-entropy, one generator seeded with
    ``seed`` for the whole run); certified when it is correct and ``method`` certifies it.
    Every sample is bounded, misclassified ones included, so that the soundness check (a certified
    sample must survive the clean input and the attack) covers all of them; it raises
    :class:`SoundnessError`. The result depends on ``batch_size`` only through the random starts.
    ``method`` "complete" decides each correct input with the branch and bound instead, at most
    ``complete_timeout`` seconds each (an input left undecided counts as not certified).
    ``options`` are the method's (see :func:`bound_options`; ``alpha_steps``, when given, is its ``steps``).
    ``progress`` is called with the number of inputs done after each batch and, with method
    "complete", after each input the verifier decides.
    """
    eps = check_radius(eps)
    theta = _check_data(spec, theta, x, y)
    complete = method == COMPLETE
    options = {} if complete else bound_options(method, alpha_steps, options)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    counts = torch.zeros(3, dtype=torch.long)
    for part in _batches(x.shape[0], batch_size):
        xb, yb = x[part], y[part]
        natural = _correct(spec, theta, xb, yb)
        robust = natural.clone()
        if bool(natural.any()):
            attacked = pgd_attack(spec, theta, xb[natural], yb[natural], eps, steps=pgd_steps,
                                  restarts=pgd_restarts, generator=generator)
            robust[natural] = _correct(spec, theta, attacked, yb[natural])
        if complete:  # only correct inputs can be certified; verify those alone
            cert = torch.zeros_like(natural)
            positions = (part.start + natural.nonzero().squeeze(-1)).tolist()
            decided = None if progress is None else partial(_report_input, progress, positions)
            cert[natural] = _verified_batch(spec, theta, xb[natural], yb[natural], eps, complete_timeout,
                                            seed + part.start, decided)
        else:
            cert = _certified_batch(spec, theta, xb, yb, eps, method, options)
        _check_sound(cert, robust, part.start, method, eps)
        counts += torch.stack([natural.sum(), robust.sum(), (cert & natural).sum()]).cpu()
        if progress is not None:
            progress(part.stop)
    n = x.shape[0]
    natural_acc, adversarial_acc, certified_acc = (int(c) / n for c in counts)
    return EvalResult(natural_acc, adversarial_acc, certified_acc, n, method, eps)


def certify(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, method: str, *,
            batch_size: int = DEFAULT_BATCH_SIZE, alpha_steps: int | None = None,
            options: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Per sample: correctly classified and certified by ``method`` at radius eps, [N] bool."""
    eps = check_radius(eps)
    theta = _check_data(spec, theta, x, y)
    options = bound_options(method, alpha_steps, options)
    masks = [_correct(spec, theta, x[part], y[part])
             & _certified_batch(spec, theta, x[part], y[part], eps, method, options)
             for part in _batches(x.shape[0], batch_size)]
    return torch.cat(masks)


def certified_accuracy_curve(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                             radii: Sequence[float], method: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
                             alpha_steps: int | None = None) -> list[float]:
    """Certified accuracy at each radius (in the order given).

    A certificate at radius r covers every smaller ball, so a sample counts at r when it is
    certified at any grid radius >= r. That is sound and makes the curve non-increasing even for
    relaxations whose bounds are not monotone in the region (DeepPoly's slope choice, alpha-CROWN).
    """
    values = [check_radius(r, "radius") for r in radii]
    if not values:
        raise InvalidInput("radii", "is empty: give at least one radius")
    order = sorted(range(len(values)), key=values.__getitem__)
    masks = torch.stack([certify(spec, theta, x, y, values[i], method, batch_size=batch_size,
                                 alpha_steps=alpha_steps) for i in order])
    covered = masks.flip(0).cummax(dim=0).values.flip(0)  # certified at this radius or a larger one
    accuracy = covered.double().mean(dim=1).tolist()
    curve = [0.0] * len(values)
    for rank, i in enumerate(order):
        curve[i] = accuracy[rank]
    return curve


def tightness_auc(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, method: str,
                  max_eps: float, points: int = 11, *, batch_size: int = DEFAULT_BATCH_SIZE,
                  alpha_steps: int | None = None) -> float:
    """Tightness of a relaxation on one network: area under certified accuracy over radius in [0, max_eps].

    Following Jovanović et al. (2022), a tighter relaxation certifies more samples at larger radii,
    so the area under the curve orders relaxations on the same network. The curve is taken on
    ``points`` equally spaced radii from 0 to ``max_eps`` (see :func:`certified_accuracy_curve`),
    integrated with the trapezoid rule and divided by ``max_eps``: the result lies in [0, 1], 1
    meaning every sample is certified up to ``max_eps``. It is at most the natural accuracy.
    """
    max_eps = check_radius(max_eps, "max_eps")
    if max_eps == 0:
        raise InvalidInput("max_eps", "must be > 0", max_eps)
    check_count(points, "points", 2)
    radii = torch.linspace(0.0, max_eps, points, dtype=torch.float64).tolist()
    curve = certified_accuracy_curve(spec, theta, x, y, radii, method, batch_size=batch_size, alpha_steps=alpha_steps)
    area = sum((a + b) / 2 * (r1 - r0) for a, b, r0, r1 in zip(curve, curve[1:], radii, radii[1:]))
    return min(1.0, max(0.0, area / max_eps))
