"""``bench/relaxations.py --profile``: every second of the call counted once, every row placed, FLOPs where work is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import relaxations
from bench.relaxations import ARITHMETIC_OPS, Profiler, format_profile, main, profile_case
from gls_core import network
from gls_core.bounds import alpha_crown, api, backsub, layerwise, methods, native, rules, slope_gradients


def _engine_functions() -> dict[str, object]:
    """Every place the profiler wraps, as it is now."""
    modules = {"api": api, "backsub": backsub, "layerwise": layerwise, "methods": methods, "alpha": alpha_crown,
               "slopes": slope_gradients}
    found: dict[str, object] = {f"{name}.{attr}": getattr(module, attr) for name, module in modules.items()
                                for attr in dir(module) if callable(getattr(module, attr))}
    found.update({f"rules.{kind.__name__}": rule for kind, rule in rules.RULES.items()})
    return found


@pytest.mark.parametrize("method", ["deeppoly", "alpha-crown", "crown-ibp", "ibp"])
def test_profile_rows_add_up_to_the_call(method: str) -> None:
    before = _engine_functions()
    profile = profile_case("cnn3-tiny", 3, 5, method, 0.1, 100.0, torch.device("cpu"), trained=False)
    assert _engine_functions() == before  # every wrapper taken out again

    covered = sum(row.seconds for row in profile.rows)
    assert all(row.seconds >= 0 and row.calls > 0 for row in profile.rows)
    # Exclusive times: nested calls are not counted twice, so the rows never exceed the call, and "other"
    # is the rest. (How much of the call the rows cover depends on the machine's load: not asserted.)
    assert covered <= profile.seconds * 1.001 + 1e-4
    assert profile.other == pytest.approx(profile.seconds - covered)

    assert all(row.stage and row.layer and row.op for row in profile.rows)
    layers = {row.layer for row in profile.rows}
    assert {"0 Conv2d", "2 Conv2d"} <= layers
    # Without the native kernels the pre-activation at x* comes another way and its row does nothing.
    skipped = () if native.usable(torch.zeros(1)) else ("relax+dual at x*",)
    arithmetic = [row for row in profile.rows if row.op in ARITHMETIC_OPS and row.op not in skipped
                  and ("Conv2d" in row.layer or "Linear" in row.layer)]
    assert arithmetic
    assert all(row.flops > 0 for row in arithmetic), [row for row in arithmetic if row.flops <= 0]
    stages = {row.stage for row in profile.rows}
    expected = {"ibp": {"ibp"}, "crown-ibp": {"walk", "final"}, "deeppoly": {"walk", "backsub 2", "final"},
                "alpha-crown": {"walk", "backsub 2", "slopes", "slope grad", "final"}}[method]
    assert expected <= stages

    table = format_profile(profile).splitlines()
    assert len(table) == 2 + len(profile.rows) + 2  # title, header, rows, other, total
    assert table[-2].startswith("other") and table[-1].startswith("total")


def test_interval_flops_follow_the_shapes() -> None:
    """IBP's convolutions: two passes (centre and radius) of every member's convolution on every sample."""
    members, batch = 2, 3
    profile = profile_case("cnn3-tiny", members, batch, "ibp", 0.1, 100.0, torch.device("cpu"), trained=False)
    spec = network("cnn3-tiny", "mnist")
    by_layer = {row.layer: row.flops for row in profile.rows if row.op == "interval"}
    for index in (0, 2):
        conv = spec.layers[index]
        outputs = 1
        for size in spec.shapes[index + 1]:
            outputs *= size
        taps = conv.in_channels * conv.kernel**2  # type: ignore[union-attr]
        assert by_layer[f"{index} Conv2d"] == 2 * 2 * members * batch * outputs * taps


def test_nested_calls_count_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exclusive times on a fake clock: the outer call keeps only its own 0.5 s, each inner call its 1 s."""
    clock = [0.0]
    monkeypatch.setattr(relaxations.time, "perf_counter", lambda: clock[0])
    profiler = Profiler(network("cnn3-tiny", "mnist"))

    def inner() -> None:
        clock[0] += 1.0

    timed_inner = profiler.wrap(inner, lambda a: ("1 ReLU", "inner"))

    def outer() -> None:
        timed_inner()
        clock[0] += 0.5
        timed_inner()

    profiler.wrap(outer, lambda a: ("all", "outer"), stage=lambda a: "s")()
    rows = {row.op: row for row in profiler.rows()}
    assert (rows["outer"].calls, rows["outer"].seconds) == (1, 0.5)
    assert (rows["inner"].calls, rows["inner"].seconds) == (2, 2.0)
    assert {row.stage for row in rows.values()} == {"s"}


def test_profile_command_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    main(["--profile", "--profile-population", "2", "--profile-batch", "3", "--profile-weights", "kaiming",
          "--profile-nets", "cnn3-tiny", "--methods", "deeppoly,ibp", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "deeppoly cnn3-tiny P=2 B=3" in printed and "ibp cnn3-tiny P=2 B=3" in printed
    data = json.loads(out.read_text())
    assert [p["method"] for p in data["profiles"]] == ["deeppoly", "ibp"]
    for profile in data["profiles"]:
        assert profile["rows"] and {"stage", "layer", "op", "calls", "seconds", "flops"} <= set(profile["rows"][0])
        assert profile["other_seconds"] == pytest.approx(
            profile["seconds"] - sum(row["seconds"] for row in profile["rows"]))
