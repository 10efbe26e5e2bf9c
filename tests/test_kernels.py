"""Every kernel candidate equals one plain reference, on CPU and (when present) CUDA; selection and pinning."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch
import torch.nn.functional as F

import gls_core
from gls_core import network
from gls_core.bounds import kernels, native, rules
from gls_core.bounds.backsub import CONCRETIZE, LAST_RELU_STEP
from gls_core.bounds.types import Box
from gls_core.members import linear_forward, matmul_ready
from gls_core.nets.spec import Conv2d, Flatten, Linear, NetSpec, ReLU

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (out_ch, in_ch, h, w, kernel, stride): CNN3-tiny and CNN3 shapes, stride 1 and 3, a kernel smaller than the stride.
GEOMETRIES = [(2, 1, 14, 14, 5, 2), (2, 2, 7, 7, 4, 2), (8, 1, 4, 4, 5, 2), (3, 2, 5, 6, 3, 1), (2, 3, 4, 3, 2, 3),
              (4, 2, 3, 3, 1, 2)]


def reference_transpose(A: torch.Tensor, weight: torch.Tensor, stride: int, crop: tuple[int, int],
                        size: tuple[int, int]) -> torch.Tensor:
    """One plain conv_transpose2d per member, cropped (zeros beyond the full output)."""
    full = torch.stack([F.conv_transpose2d(A[p], weight[p], stride=stride) for p in range(A.shape[0])])
    out = torch.zeros(*full.shape[:3], *size, dtype=A.dtype, device=A.device)
    height, width = min(size[0], full.shape[3] - crop[0]), min(size[1], full.shape[4] - crop[1])
    out[..., :height, :width] = full[..., crop[0] : crop[0] + height, crop[1] : crop[1] + width]
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("members", [1, 3, 33])
def test_transpose_candidates_equal_reference(device: str, geometry: tuple[int, ...], members: int) -> None:
    out_ch, in_ch, height, width, kernel, stride = geometry
    generator = torch.Generator().manual_seed(members * 31 + kernel)
    A = torch.randn(members, 5, out_ch, height, width, generator=generator).to(device)
    A[:, 1] = 0  # an all-zero row
    weight = torch.randn(members, out_ch, in_ch, kernel, kernel, generator=generator).to(device)
    full = ((height - 1) * stride + kernel, (width - 1) * stride + kernel)
    for crop, size in [((0, 0), full), ((1, 2), (full[0] - 1, full[1] + 2)), ((kernel // 2,) * 2, (height, width))]:
        expected = reference_transpose(A, weight, stride, crop, size)
        for name, (fn, applies) in kernels.TRANSPOSE.items():
            if not applies(A, weight, stride, crop, size):
                assert name == "native" and device != "cpu"
                continue
            got = fn(A, weight, stride, crop, size)
            assert got.shape == expected.shape, name
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{name} {geometry} {crop} {size}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("conv", [Conv2d(2, 2, 4, 2, 1), Conv2d(3, 4, 3, 1, 0), Conv2d(2, 1, 5, 3, 2)])
def test_forward_candidates_equal_reference(device: str, conv: Conv2d) -> None:
    generator = torch.Generator().manual_seed(conv.kernel)
    x = torch.randn(5, 3, conv.in_channels, 9, 8, generator=generator).to(device)
    weight = torch.randn(5, conv.out_channels, conv.in_channels, conv.kernel, conv.kernel, generator=generator)
    bias = torch.randn(5, conv.out_channels, generator=generator).to(device)
    weight = weight.to(device)
    expected = torch.stack([F.conv2d(x[p], weight[p], bias[p], stride=conv.stride, padding=conv.padding)
                            for p in range(5)])
    for name, (fn, applies) in kernels.FORWARD.items():
        assert applies(x, weight, bias, conv), name
        torch.testing.assert_close(fn(x, weight, bias, conv), expected, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(fn(x, weight, None, conv), expected - bias.view(5, 1, -1, 1, 1), rtol=1e-5,
                                   atol=1e-5, msg=name)


def test_native_kernels_build_here() -> None:
    """The machine's C compiler builds the kernels (the engine falls back to torch where none exists)."""
    assert native.library() is not None
    assert native.usable(torch.zeros(1))
    assert not native.usable(torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize("layout", ["members-first", "batch-outer", "transposed-2d", "sliced", "padded"])
def test_members_last_copies_every_layout_exactly(layout: str) -> None:
    """The kernels' members-last input equals the tensor moved to members-last, padded with zero members,
    whatever the layout it comes in (the native copy or torch's)."""
    generator = torch.Generator().manual_seed(0)
    t = {"members-first": lambda: torch.randn(32, 33, 2, 7, 7, generator=generator),
         "batch-outer": lambda: torch.randn(37, 32, 2, 14, 14, generator=generator).transpose(0, 1),
         "transposed-2d": lambda: torch.randn(7, 40, generator=generator).t(),
         "sliced": lambda: torch.randn(32, 9, 2, 5, 5, generator=generator)[:, 3:],
         "padded": lambda: torch.randn(20, 3, 4, generator=generator)}[layout]()
    got = native._members_last(t)
    lanes = -(-t.shape[0] // native._width(t.shape[0])) * native._width(t.shape[0])
    assert got.shape == (*t.shape[1:], lanes) and got.is_contiguous()
    assert torch.equal(got[..., : t.shape[0]], t.movedim(0, -1))
    assert not got[..., t.shape[0]:].any()


def test_the_walk_keeps_its_maps_members_last() -> None:
    """The first layer's interval bounds are stored members-last, so the relaxation maps built from them reach
    the kernels without a copy; under autograd they stay ordinary tensors."""
    spec = network("cnn3-tiny", "mnist")
    params = torch.randn(32, spec.num_params) * 0.1
    box = Box(torch.zeros(4, 1, 28, 28), torch.full((4, 1, 28, 28), 0.2))
    at = rules.At(spec, params, 0)
    bounds = rules.rule_of(spec.layers[0]).interval(at, box, True)
    assert bounds.lower.movedim(0, -1).is_contiguous() and bounds.upper.movedim(0, -1).is_contiguous()
    assert native._members_last(bounds.lower).data_ptr() == bounds.lower.data_ptr()
    reference = rules.rule_of(spec.layers[0]).interval(rules.At(spec, params.requires_grad_(True), 0), box, True)
    assert torch.equal(reference.lower.detach(), bounds.lower) and torch.equal(reference.upper.detach(), bounds.upper)


def test_members_last_maps_reach_matmuls_in_a_layout_blas_reads() -> None:
    """A members-last map (unit stride on P) is copied before a batched matmul (bmm has no fast path for it);
    every other layout is passed through as it is; the interval of a Linear layer is unchanged by the copy."""
    members_last = torch.randn(6, 40, 32).permute(2, 0, 1)  # [P, B, I] with unit stride on P
    ready = matmul_ready(members_last)
    assert ready.stride(-1) == 1 and torch.equal(ready, members_last)
    rows_last = torch.randn(32, 6, 40)
    assert matmul_ready(rows_last) is rows_last and matmul_ready(rows_last.transpose(1, 2)).data_ptr() \
        == rows_last.data_ptr()
    weight, bias = torch.randn(32, 10, 40), torch.randn(32, 10)
    assert torch.equal(linear_forward(members_last, weight, bias), linear_forward(ready, weight, bias))


def test_native_concretize_equals_materialised() -> None:
    """Rows at arbitrary window origins, partly outside the map (zero padding), against an explicit sum."""
    generator = torch.Generator().manual_seed(3)
    members, rows, out_ch, in_ch, height, kernel, stride = 35, 7, 3, 2, 4, 3, 2
    A = torch.randn(members, rows, out_ch, height, height, generator=generator)
    weight = torch.randn(members, out_ch, in_ch, kernel, kernel, generator=generator)
    centre = torch.randn(4, in_ch, 9, 8, generator=generator)
    radius = torch.rand(4, in_ch, 9, 8, generator=generator)
    sample = torch.tensor([0, 3, 1, 2, 2, 0, 3])
    origin_y = torch.tensor([-2, 0, 3, -5, 1, 8, -20])
    origin_x = torch.tensor([0, -1, 2, 4, -3, 0, 1])
    got = kernels.concretize_native(A, weight, stride, centre, radius,
                                    kernels.RowPlacement(sample, origin_y, origin_x))
    g = reference_transpose(A, weight, stride, (0, 0), ((height - 1) * stride + kernel,) * 2)
    expected = torch.zeros(members, rows)
    for n in range(rows):
        for y in range(g.shape[3]):
            for x in range(g.shape[4]):
                iy, ix = int(origin_y[n]) + y, int(origin_x[n]) + x
                if 0 <= iy < 9 and 0 <= ix < 8:
                    v = g[:, n, :, y, x]
                    c, r = centre[sample[n], :, iy, ix], radius[sample[n], :, iy, ix]
                    expected[:, n] += (v * c - v.abs() * r).sum(-1)
    assert bool((got[:, 6] == 0).all())  # entirely outside the map
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def small_cnn(stride: int) -> NetSpec:
    return NetSpec((1, 9, 9), (Conv2d(1, 3, 3, stride, 1), ReLU(), Conv2d(3, 2, 3, stride, 0), ReLU(), Flatten(),
                               Linear(8 if stride == 2 else 98, 4)), name="small")


NETWORKS = [
    ("cnn3-tiny", lambda: gls_core.network("cnn3-tiny", "mnist")),
    ("cnn3", lambda: gls_core.network("cnn3", "mnist")),
    ("stride-1", lambda: small_cnn(1)),
    ("stride-2", lambda: small_cnn(2)),
]


def bounds_with(pins: dict[str, str], spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, C: torch.Tensor,
                method: str, sides: str = "both") -> tuple[torch.Tensor, torch.Tensor]:
    try:
        for operation, candidate in pins.items():
            kernels.pin(operation, candidate)
        with torch.no_grad():
            return gls_core.compute_bounds(spec, x, 0.1, method, C=C, params=theta, sides=sides)  # type: ignore[arg-type]
    finally:
        for operation in pins:
            kernels.pin(operation, None)


@pytest.mark.parametrize("name,make", NETWORKS)
@pytest.mark.parametrize("method", ["crown-ibp", "deeppoly", "hbox", "alpha-crown"])
def test_bounds_equal_under_every_kernel_choice(name: str, make, method: str) -> None:  # type: ignore[no-untyped-def]
    """Whole relaxations agree whichever candidate each operation runs (selected and all rows included)."""
    spec = make()
    generator = torch.Generator().manual_seed(7)
    theta = gls_core.kaiming_uniform(spec, generator) + 1e-3 * torch.randn(34, spec.num_params, generator=generator)
    x = torch.rand(3, *spec.input_shape, generator=generator)
    C = gls_core.margin_spec(torch.tensor([0, 1, 2]), spec.num_outputs)
    plain = {"transpose": "grouped", "concretize": "materialize", "relax-concretize": "stepwise", "forward": "grouped"}
    expected = bounds_with(plain, spec, theta, x, C, method)
    assert bool(torch.isfinite(expected[0]).all()) and bool((expected[0] <= expected[1]).all())
    for transpose in kernels.TRANSPOSE:
        for concretize in CONCRETIZE:
            for last, forward in zip(LAST_RELU_STEP, ("dense", "grouped", "dense")):
                pins = {"transpose": transpose, "concretize": concretize, "relax-concretize": last, "forward": forward}
                got = bounds_with(pins, spec, theta, x, C, method)
                for side in range(2):
                    torch.testing.assert_close(got[side], expected[side], rtol=1e-5, atol=1e-5, msg=str(pins))


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "deeppoly", "alpha-crown"])
def test_one_side_equals_that_side_of_both(method: str) -> None:
    spec = gls_core.network("cnn3-tiny", "mnist")
    generator = torch.Generator().manual_seed(11)
    theta = gls_core.kaiming_uniform(spec, generator) + 1e-3 * torch.randn(4, spec.num_params, generator=generator)
    x = torch.rand(5, 1, 28, 28, generator=generator)
    C = gls_core.margin_spec(torch.arange(5), 10)
    with torch.no_grad():
        lower, upper = gls_core.compute_bounds(spec, x, 0.05, method, C=C, params=theta)
        only_lower = gls_core.compute_bounds(spec, x, 0.05, method, C=C, params=theta, sides="lower")
        only_upper = gls_core.compute_bounds(spec, x, 0.05, method, C=C, params=theta, sides="upper")
    torch.testing.assert_close(only_lower[0], lower, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(only_upper[1], upper, rtol=1e-5, atol=1e-5)
    assert bool((only_lower[1] == math.inf).all()) and bool((only_upper[0] == -math.inf).all())


def test_one_side_keeps_gradients() -> None:
    spec = gls_core.network("cnn3-tiny", "mnist")
    theta = gls_core.kaiming_uniform(spec, torch.Generator().manual_seed(0)).unsqueeze(0).requires_grad_(True)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    _, upper = gls_core.compute_bounds(spec, x, 0.05, "deeppoly", C=gls_core.margin_spec(torch.tensor([3, 4]), 10),
                                       params=theta, sides="upper")
    (gradient,) = torch.autograd.grad(gls_core.robust_loss(upper).sum(), theta)
    assert bool(torch.isfinite(gradient).all()) and float(gradient.abs().sum()) > 0


def test_invalid_sides_named() -> None:
    spec = gls_core.network("cnn3-tiny", "mnist")
    with pytest.raises(ValueError, match="sides"):
        gls_core.compute_bounds(spec, torch.rand(1, 1, 28, 28), 0.1, params=torch.zeros(spec.num_params),
                                sides="top")  # type: ignore[arg-type]


def test_selection_measures_caches_and_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLS_KERNEL_TUNING", "1")
    kernels.reset()
    A, weight = torch.randn(33, 40, 2, 7, 7), torch.randn(33, 2, 2, 4, 4)
    expected = reference_transpose(A, weight, 2, (1, 1), (14, 14))
    torch.testing.assert_close(kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14)), expected, rtol=1e-5, atol=1e-5)
    (choice,) = [c for c in kernels.choices() if c["operation"] == "transpose"]
    assert choice["chosen"] in kernels.TRANSPOSE
    assert set(choice["seconds"]) == {"native", "shuffle", "grouped", "dense", "polyphase"}
    assert choice["seconds"][choice["chosen"]] == min(choice["seconds"].values())
    kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14))
    assert len(kernels.choices()) == 1  # cached: measured once per key
    monkeypatch.setenv("GLS_KERNELS", "transpose=polyphase")
    kernels.reset()
    kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14))
    assert kernels.choices() == []  # pinned: nothing measured
    monkeypatch.setenv("GLS_KERNELS", "transpose=fast")
    with pytest.raises(ValueError, match="unknown transpose kernel 'fast'"):
        kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14))
    with pytest.raises(ValueError, match="unknown kernel operation"):
        kernels.pin("gemm", "native")


def test_inside_untimed_nothing_is_measured_or_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLS_KERNEL_TUNING", "1")
    kernels.reset()
    A, weight = torch.randn(3, 40, 2, 7, 7), torch.randn(3, 2, 2, 4, 4)
    expected = reference_transpose(A, weight, 2, (1, 1), (14, 14))
    with kernels.untimed():
        with kernels.untimed():  # nests
            got = kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14))
        assert kernels.choices() == []
        kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert kernels.choices() == []  # nothing measured, nothing cached for timed calls
    kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14))
    assert len(kernels.choices()) == 1  # outside again: measured as before


def _sleeping(seconds: float, name: str):  # type: ignore[no-untyped-def]
    def run(*_: object) -> str:
        time.sleep(seconds)
        return name
    return run


INNER: kernels.Table = {"slow": (_sleeping(0.05, "slow"), lambda *_: True),
                        "quick": (_sleeping(0.0, "quick"), lambda *_: True)}


def _through_inner(*args: object) -> str:
    """An outer candidate made of an inner operation with its own timed choice (a step-by-step path)."""
    return INNER[kernels.choose("inner", ("inner",), INNER, args)][0](*args)


OUTER: kernels.Table = {"plain": (_sleeping(0.005, "plain"), lambda *_: True),
                        "stepwise": (_through_inner, lambda *_: True)}


def test_nested_choices_made_while_timing_do_not_count_against_the_outer_candidate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The step-by-step candidate's first run times the inner candidates (50 ms for the slow one); it is a
    warm-up, and the candidate is judged on its own runs (well under the plain candidate's 5 ms)."""
    monkeypatch.setenv("GLS_KERNEL_TUNING", "1")
    monkeypatch.delenv("GLS_KERNELS", raising=False)
    kernels.reset()
    args = (torch.zeros(1, 1, 1, 1, 1),)
    assert kernels.choose("outer", ("outer",), OUTER, args) == "stepwise"
    seconds = {c["operation"]: c["seconds"] for c in kernels.choices()}
    assert seconds["inner"]["slow"] >= 0.05 and seconds["outer"]["stepwise"] < 0.005
    kernels.reset()


def toy_choice(key: int, wide: bool = False) -> str:
    """A choice of the test's own operation "toy": candidates return their names; "wide" applies to wide calls only."""
    return kernels.choose("toy", ("toy", key), TOY, (wide, torch.zeros(1, 1, 1, 1, 1)))


TOY: kernels.Table = {"plain": (lambda *_: "plain", lambda *_: True), "fast": (lambda *_: "fast", lambda *_: True),
                      "wide": (lambda *_: "wide", lambda wide, _: wide)}


def test_a_recorded_plan_is_followed_whatever_this_process_would_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kernels.OPERATIONS, "toy", TOY)
    monkeypatch.setenv("GLS_KERNEL_TUNING", "1")
    monkeypatch.setenv("GLS_KERNELS", "toy=wide")
    kernels.reset()
    with kernels.record_plan() as plan:
        assert toy_choice(1, wide=True) == "wide"  # as configured: pinned
        assert toy_choice(1) == "plain"  # its recorded choice does not apply: untimed, as a follower of the plan
        measured = toy_choice(2)  # the pin does not apply: measured
    assert plan == {"('toy', 1)": "wide", "('toy', 2)": measured}
    assert json.loads(json.dumps(plan)) == plan  # plain data
    monkeypatch.setenv("GLS_KERNELS", "toy=fast")
    kernels.reset()
    with kernels.follow_plan(plan):
        assert [toy_choice(1, wide=True), toy_choice(1), toy_choice(2)] == ["wide", "plain", measured]
        assert toy_choice(3) == "plain"  # not in the plan: untimed, neither the pin nor a measurement
        elsewhere: list[str] = []
        thread = threading.Thread(target=lambda: elsewhere.append(toy_choice(1, wide=True)))
        thread.start()
        thread.join()
        assert elsewhere == ["fast"]  # another thread follows no plan
    assert kernels.choices() == []  # nothing measured or cached while following
    assert toy_choice(3) == "fast"
    with kernels.using_plan(None) as recorded:  # no plan: choose as configured and record
        toy_choice(4)
    with kernels.using_plan(recorded) as followed:
        assert followed == {"('toy', 4)": "fast"} and toy_choice(4, wide=True) == "fast" and toy_choice(5) == "plain"


def test_following_a_recorded_plan_repeats_the_work_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLS_KERNEL_TUNING", "1")
    kernels.reset()
    A, weight = torch.randn(33, 40, 2, 7, 7), torch.randn(33, 2, 2, 4, 4)
    with kernels.record_plan() as plan:
        made = kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14))
    (key,) = plan
    assert key.startswith("('transpose', Geometry(out_ch=2, height=7, width=7, in_ch=2, kernel=4, stride=2)")
    for pinned in kernels.TRANSPOSE:
        monkeypatch.setenv("GLS_KERNELS", f"transpose={pinned}")
        with kernels.follow_plan(plan):
            assert torch.equal(kernels.conv_transpose(A, weight, 2, (1, 1), (14, 14)), made)


def test_gradients_never_take_the_native_kernels() -> None:
    A = torch.randn(2, 3, 2, 4, 4, requires_grad=True)
    weight = torch.randn(2, 2, 1, 3, 3)
    applies = kernels.TRANSPOSE["native"][1]
    assert not applies(A, weight, 2, (0, 0), (9, 9))
    with torch.no_grad():
        assert applies(A, weight, 2, (0, 0), (9, 9))


def test_native_concretize_gradient_equals_materialised() -> None:
    """The rows' gradient (alpha-CROWN's slope step) matches autograd through the materialised path."""
    generator = torch.Generator().manual_seed(5)
    A = torch.randn(9, 6, 2, 5, 5, generator=generator)
    weight = torch.randn(9, 2, 1, 4, 4, generator=generator)
    centre, radius = torch.rand(3, 1, 12, 12, generator=generator), 0.1 * torch.rand(3, 1, 12, 12, generator=generator)
    sample = torch.tensor([0, 1, 2, 0, 1, 2])
    origin = torch.tensor([-1, -1, 0, 1, -3, 2])
    placement = kernels.RowPlacement(sample, origin, origin.flip(0))
    weights = torch.randn(9, 6, generator=generator)
    grads = []
    for fn in (kernels.concretize_native, materialised_concretize):
        rows = A.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad((fn(rows, weight, 2, centre, radius, placement) * weights).sum(), rows)
        grads.append(gradient)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def materialised_concretize(A: torch.Tensor, weight: torch.Tensor, stride: int, centre: torch.Tensor,
                            radius: torch.Tensor, placement: kernels.RowPlacement) -> torch.Tensor:
    full = torch.stack([F.conv_transpose2d(A[p], weight[p], stride=stride) for p in range(A.shape[0])])
    height, width = full.shape[-2:]
    values = []
    for n in range(A.shape[1]):
        y0, x0, b = int(placement.origin_y[n]), int(placement.origin_x[n]), int(placement.sample[n])
        pad = F.pad(torch.stack([centre[b], radius[b]]), (height, height, width, width))
        window = pad[:, :, y0 + height : y0 + 2 * height, x0 + width : x0 + 2 * width]
        g = full[:, n]
        values.append((g * window[0]).sum((1, 2, 3)) - (g.abs() * window[1]).sum((1, 2, 3)))
    return torch.stack(values, dim=1)


def test_alpha_crown_stopped_at_once_equals_no_steps() -> None:
    from gls_core import compute_bounds, kaiming_uniform, network

    spec = network("cnn3-tiny", "digits")
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(0))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stopped = compute_bounds(spec, x, 0.05, "alpha-crown", params=theta, steps=50, should_stop=lambda: True)
        none = compute_bounds(spec, x, 0.05, "alpha-crown", params=theta, steps=0)
        full = compute_bounds(spec, x, 0.05, "alpha-crown", params=theta, steps=5)
    assert all(torch.equal(a, b) for a, b in zip(stopped, none))
    assert bool((full[0] >= none[0] - 1e-6).all())  # the steps it skipped would only have tightened
