"""Options of `gls evaluate`, `gls certify`, `gls datasets` and `gls models`: one source for defaults and choices.

`--help` must list the methods and show the defaults that ``gls_core.evaluation`` uses, and `certify`
must report accuracies as percentages, as `train` and `evaluate` do.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_gateway_support import ALICE, Stack, digits_model, digits_test, start_stack
from typer.testing import CliRunner, Result

from gls_core.catalog import certify_methods
from gls_core.cli.console import percent
from gls_core.evaluation import DEFAULT_PGD_RESTARTS, DEFAULT_PGD_STEPS, certify, evaluate
from gls_core.training.checkpoint import save_model
from services import client_cli
from services.cli import app

ROOT = Path(__file__).resolve().parents[1]
WIDE = {"COLUMNS": "250"}  # one help row per option


def gls(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner(env={**WIDE, **(env or {})}).invoke(app, list(args))


def option_rows(verb: str) -> dict[str, str]:
    """``--option`` -> its help row, from `gls VERB --help`."""
    shown = gls(verb, "--help")
    assert shown.exit_code == 0, shown.output
    rows = {}
    for line in shown.stdout.splitlines():
        match = re.search(r"(--[a-z-]+)\s", line)
        if match:
            rows[match.group(1)] = line
    return rows


def test_evaluate_defaults_are_the_librarys() -> None:
    library = inspect.signature(evaluate).parameters
    expected = {"--batch-size": library["batch_size"].default, "--pgd-steps": library["pgd_steps"].default,
                "--pgd-restarts": library["pgd_restarts"].default, "--timeout": library["complete_timeout"].default}
    rows = option_rows("evaluate")
    for option, default in expected.items():
        assert f"[default: {default}]" in rows[option], rows[option]
        described = rows[option].split(">", 1)[1].split("[default")[0].split("]", 1)[-1]
        assert described.strip(), f"{option} has no help text"
    assert (expected["--pgd-steps"], expected["--pgd-restarts"]) == (DEFAULT_PGD_STEPS, DEFAULT_PGD_RESTARTS)
    assert library["alpha_steps"].default is None and library["options"].default is None  # the method's record's
    assert "evaluation setting" in rows["--alpha-steps"] and "NAME=VALUE" in rows["--option"]
    training = (ROOT / "docs" / "training.md").read_text()
    assert f"({DEFAULT_PGD_STEPS} steps, {DEFAULT_PGD_RESTARTS} restarts by default)" in training


@pytest.mark.parametrize("verb", ["evaluate", "certify"])
def test_method_lists_its_choices_and_refuses_others(verb: str) -> None:
    row = option_rows(verb)["--method"]
    assert all(method in row for method in certify_methods()) and "[default: deeppoly]" in row, row
    required = ["/nowhere", "--eps", "0.1"] if verb == "evaluate" else ["--model", "m", "--data", "digits",
                                                                        "--eps", "0.1"]
    refused = gls(verb, *required, "--method", "zonotope", env={"GLS_URL": "http://127.0.0.1:9", "GLS_TOKEN": "t"})
    assert refused.exit_code == 2
    assert "unknown method 'zonotope'" in refused.stderr and "'complete'" in refused.stderr


def test_datasets_and_models_verbs_are_described() -> None:
    for group in (client_cli.datasets_app, client_cli.models_app):
        assert group.info.help
        for command in group.registered_commands:
            assert command.callback is not None and (command.callback.__doc__ or "").strip(), command.name
    listed = gls("models", "--help").stdout
    assert "Download a stored model" in listed and "Delete one of your stored models" in listed


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=1)
    yield running
    running.stop()


def test_certify_prints_percentages_and_json_fractions(stack: Stack, tmp_path: Path) -> None:
    spec, theta = digits_model()
    save_model(tmp_path / "model.safetensors", theta, "fc-16", "digits")
    env: dict[str, str | None] = {"GLS_URL": stack.url, "GLS_TOKEN": ALICE, "GLS_CLUSTER": None}
    model_id = gls("models", "upload", str(tmp_path / "model.safetensors"), env=env).stdout.strip()
    x, y = digits_test(20)
    expected = float(certify(spec, theta, x, y, 0.02, "ibp").double().mean())
    args = ("certify", "--model", model_id, "--data", "digits", "--limit", "20", "--eps", "0.02", "--method", "ibp")
    table = gls(*args, env=env)
    assert table.exit_code == 0, table.output
    assert percent(expected) in table.stdout and "%" in table.stdout
    answered = gls(*args, "--json", "--chunk", "8", env={**env, "GLS_LOG_EVERY_S": "0"})
    answer = json.loads(answered.stdout)  # progress goes to stderr, one line per chunk
    assert answer["certified_acc"] == expected and 0 <= answer["natural_acc"] <= 1
    assert [line.split(" | ")[0][9:] for line in answered.stderr.splitlines() if " input " in line] == [
        "certify ibp eps=0.02 input 8/20 (40.0%)", "certify ibp eps=0.02 input 16/20 (80.0%)",
        "certify ibp eps=0.02 input 20/20 (100.0%)"], answered.stderr
