"""`gls config`: the schema, a config with every default, and docs/config.md, all from the pydantic model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.testing import CliRunner, Result

from gls_core.cli import app
from gls_core.cli.config_cmd import config_reference
from gls_core.training.config import TrainConfig, load_config, relaxation_sections

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
REFERENCE = ROOT / "docs" / "config.md"


def gls(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, FieldInfo) of every field, sections included (the relaxations' too), at any depth."""
    if model is TrainConfig:
        for key, (section, description) in relaxation_sections().items():
            yield key, FieldInfo(description=description)
            yield from fields(section, f"{key}.")
    for name, info in model.model_fields.items():
        yield prefix + name, info
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from fields(arg, f"{prefix}{name}.")


def leaves(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_docs_config_md_is_the_generated_reference() -> None:
    written = REFERENCE.read_text()
    assert written == config_reference(), "docs/config.md is stale: run `gls config reference > docs/config.md`"
    printed = gls("config", "reference")
    assert printed.exit_code == 0 and printed.stdout == written


def test_every_field_is_described_and_in_the_reference() -> None:
    reference = REFERENCE.read_text()
    everything = list(fields(TrainConfig))
    assert len(everything) > 60
    for path, info in everything:
        assert info.description, f"{path} has no description"
        if "." in path:  # sections are headings; their fields are rows
            assert f"| `{path}` |" in reference, path
    for path, meaning in (("data.path", "`.npz`"), ("data.test_path", "same format"),
                          ("data.input_like", "input shape")):  # the fields of a user's own data file
        row = next(line for line in reference.splitlines() if line.startswith(f"| `{path}` |"))
        assert meaning in row, row
    assert "| `schedule.lr_milestones` | list of int | `[50, 60]` |" in reference
    assert "| `eps` | float | `0.1` | >= 0 and <= 1 |" in reference
    assert "| `evaluation.eps` | float \\| null | `null` | >= 0 and <= 1 |" in reference
    assert "one of `grad`, `pgd`, `pgpe`, `rgs`" in reference


def test_schema_is_the_models_json_schema() -> None:
    printed = gls("config", "schema")
    assert printed.exit_code == 0, printed.output
    schema = json.loads(printed.stdout)
    assert schema == TrainConfig.model_json_schema()
    assert "complete" in schema["$defs"]["EvalConfig"]["properties"]["method"]["enum"]
    assert schema["properties"]["eps"]["maximum"] == 1


def test_show_prints_every_default_and_applies_sets(tmp_path: Path) -> None:
    preset = CONFIGS / "quick-mnist-cnn3tiny-dp-pgpe.yaml"
    printed = gls("config", "show", str(preset), "--set", "eps=0.2", "--set", "pgpe.popsize=32")
    assert printed.exit_code == 0, printed.output
    shown = yaml.safe_load(printed.stdout)
    assert leaves(shown) == {path for path, info in fields(TrainConfig)
                             if not any(other.startswith(path + ".") for other, _ in fields(TrainConfig))}
    assert shown["eps"] == 0.2 and shown["pgpe"]["popsize"] == 32 and shown["rgs"]["samples"] == 2
    copy = tmp_path / "shown.yaml"
    copy.write_text(printed.stdout)
    assert load_config(copy) == load_config(preset, ["eps=0.2", "pgpe.popsize=32"])


def test_show_refuses_the_short_schedule_that_keeps_the_long_ramp() -> None:
    preset = str(CONFIGS / "mnist-cnn3-deeppoly-rgs.yaml")
    refused = gls("config", "show", preset, "--set", "schedule.epochs=5", "--set", "data.train_subset=20000")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "schedule.eps_ramp_epochs: eps reaches its target only after" in refused.stderr
    assert "schedule.lr_milestones: [50, 60] must lie within 1..4" in refused.stderr
    fixed = gls("config", "show", preset, "--set", "schedule.epochs=5", "--set", "data.train_subset=20000",
                "--set", "schedule.eps_ramp_epochs=2", "--set", "schedule.lr_milestones=[3, 4]")
    assert fixed.exit_code == 0, fixed.output
    assert yaml.safe_load(fixed.stdout)["schedule"]["lr_milestones"] == [3, 4]


def test_show_warns_about_a_cap_that_has_no_effect() -> None:
    preset = str(CONFIGS / "quick-mnist-cnn3tiny-dp-pgpe.yaml")
    shown = gls("config", "show", preset, "--set", "schedule.steps_per_epoch=1000")
    assert shown.exit_code == 0, shown.output
    assert "warning: schedule.steps_per_epoch: 1000 is more than the 468 full batches" in shown.stderr
    assert "warning" not in gls("config", "show", preset).stderr
