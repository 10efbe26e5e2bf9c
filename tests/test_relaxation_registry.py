"""The relaxation registry: one record per relaxation, read by every entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gls_core import relaxations
from gls_core.bounds.api import compute_bounds
from gls_core.errors import InvalidInput
from gls_core.nets.zoo import network
from gls_core.relaxations import ALPHA_CROWN, check_relaxation

ROOT = Path(__file__).resolve().parents[1]


def invalid(method: str, options: dict[str, object], **kwargs: bool) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check_relaxation(method, options, "relaxation", **kwargs)
    return caught.value


def test_a_relaxation_registered_outside_the_package_is_accepted_everywhere() -> None:
    """`gls evaluate`, a training config, REST certify, the gRPC Certifier and a worker, with nothing else edited."""
    env = {**os.environ, "GLS_DATA_DIR": os.environ.get("GLS_DATA_DIR", "")}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "relaxation_plugin.py")], cwd=ROOT / "tests",
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_names_aliases_and_what_each_offers() -> None:
    assert relaxations.lookup("crown") is relaxations.lookup("deeppoly")
    assert set(relaxations.names()) == {"ibp", "hbox", "crown-ibp", "deeppoly", "crown", "alpha-crown"}
    assert relaxations.differentiable() == {"ibp", "hbox", "crown-ibp", "deeppoly", "crown"}
    with pytest.raises(ValueError, match="already registered"):
        relaxations.register(relaxations.Relaxation("crown", "gls_core.bounds.methods:ibp_bounds", True, "again"))
    error = invalid("zonotope", {})
    assert error.field == "relaxation.method"
    assert error.reason.startswith("unknown relaxation 'zonotope'; expected one of alpha-crown, crown")
    assert invalid("", {}).reason.startswith("is empty; expected one of")


def test_options_are_checked_and_defaults_filled_in() -> None:
    assert check_relaxation(ALPHA_CROWN, {"steps": 3, "init": "deeppoly"}) == (
        ALPHA_CROWN, {"steps": 3, "step_size": 0.5, "init": "deeppoly"})
    assert check_relaxation(ALPHA_CROWN, {}, evaluating=True)[1] == {"steps": 20, "step_size": 0.1, "init": "deeppoly"}
    assert check_relaxation("ibp", {"steps": None}) == ("ibp", {})
    cases = [
        ("ibp", {"steps": 2}, {}, "relaxation", "['steps'] only apply to alpha-crown, not ibp"),
        (ALPHA_CROWN, {"lr": 0.1}, {}, "relaxation", "alpha-crown options are ['steps', 'step_size', 'init'], got "
                                                     "unknown ['lr']"),
        (ALPHA_CROWN, {"steps": -1}, {"served": True}, "relaxation.steps", "must be an integer in [0, 1000], got -1"),
        (ALPHA_CROWN, {"steps": 5000}, {"served": True}, "relaxation.steps",
         "must be an integer in [0, 1000], got 5000"),
        (ALPHA_CROWN, {"steps": 1.5}, {}, "relaxation.steps", "must be an integer, got float"),
        (ALPHA_CROWN, {"step_size": -0.5}, {}, "relaxation.step_size", "must be a number in [0, 10], got -0.5"),
        (ALPHA_CROWN, {"init": 1.5}, {}, "relaxation.init", "must be 'deeppoly' or a number in [0, 1], got 1.5"),
        (ALPHA_CROWN, {"init": "area"}, {}, "relaxation.init", "must be 'deeppoly' or a number in [0, 1], got 'area'"),
        (ALPHA_CROWN, {"init": True}, {}, "relaxation.init", "must be 'deeppoly' or a number in [0, 1], got True"),
    ]
    for method, options, kwargs, field, reason in cases:
        error = invalid(method, options, **kwargs)
        assert (error.field, error.reason) == (field, reason)
    assert check_relaxation(ALPHA_CROWN, {"steps": 5000})[1]["steps"] == 5000  # in process: no server's cap


def test_compute_bounds_applies_the_records_defaults() -> None:
    spec = network("fc-16", "digits")
    theta = torch.randn(spec.num_params, generator=torch.Generator().manual_seed(0)) * 0.3
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    bare = compute_bounds(spec, x, 0.05, ALPHA_CROWN, params=theta)
    named = compute_bounds(spec, x, 0.05, ALPHA_CROWN, params=theta,
                           **relaxations.lookup(ALPHA_CROWN).defaults())
    assert all(torch.equal(a, b) for a, b in zip(bare, named))
    with pytest.raises(InvalidInput, match="steps"):
        compute_bounds(spec, x, 0.05, "deeppoly", params=theta, steps=3)


def test_the_method_names_are_spelled_in_the_registry_only() -> None:
    """Callers name a relaxation through the registry's constants or records, never by a literal of their own."""
    spelled = [path.relative_to(ROOT) for folder in ("gls_core", "services", "bench") for path in
               (ROOT / folder).rglob("*.py") if f'"{ALPHA_CROWN}"' in path.read_text()]
    assert spelled == [Path("gls_core/relaxations.py")]


def test_a_config_holds_each_relaxations_options_in_its_section() -> None:
    from gls_core.training.config import ConfigError, parse_config

    config = parse_config({"relaxation": ALPHA_CROWN, "estimator": "pgpe", "alpha": {"steps": 3}})
    assert config.relaxation_options() == {"steps": 3, "step_size": 0.5, "init": 0.5}
    assert parse_config({}).section("alpha").model_dump() == {"steps": 1, "step_size": 0.5, "init": 0.5}
    for data, where, reason in (({"alpha": None}, "alpha", "valid dictionary"),
                                ({"alpha": {"init": 7}}, "alpha.init", "'deeppoly' or a number in [0, 1]"),
                                ({"alpha": {"step_size": 20}}, "alpha.step_size", "less than or equal to 10"),
                                ({"alpah": {}}, "alpah", "did you mean alpha?")):
        with pytest.raises(ConfigError) as caught:
            parse_config(data)
        line = next(line for line in str(caught.value).splitlines() if line.strip().startswith(f"{where}:"))
        assert reason in line, line
