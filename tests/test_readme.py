"""The README's commands, as a new user types them: they must not drift from the code.

The first-run block is run verbatim in a fresh clone, after the README's own environment lines
(the set-up command's .venv is linked in, since installing takes minutes). Every other ``gls``
command in the README is parsed by the real command line (verbs, options and their choices), and
the configs they train are validated with their ``--set`` overrides; the Python example is run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.core

from gls_core.training import load_config
from services.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIRST_RUN = "## A first run"
UsageError = typer.BadParameter.__base__  # typer's own click's UsageError (typer vendors click)
ENVIRONMENT = "source .venv/bin/activate"


def blocks(language: str) -> list[tuple[str, str]]:
    """(heading above, body) of every fenced block in ``language``."""
    found, heading = [], ""
    for match in re.finditer(rf"^(#+ [^\n]*)$|^```{language}\n(.*?)^```", README.read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(1)
        else:
            found.append((heading, match.group(2)))
    return found


def commands(body: str) -> list[list[str]]:
    """The shell commands of a block: continuations joined, comments dropped, ``&&`` chains split."""
    joined = body.replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if current:
                    result.append(current)
                current = []
            else:
                current.append(word)
    return result


def gls_commands() -> list[list[str]]:
    return [words[1:] for heading, body in blocks("bash") if not heading.startswith(FIRST_RUN)
            for words in commands(body) if words[0] == "gls"]


def parse(arguments: list[str]) -> typer.Context:
    """Parse ``gls ARGS`` as the command line would, down to the leaf command, without running it."""
    command = typer.main.get_command(app)
    context = command.make_context("gls", list(arguments), resilient_parsing=False)
    while isinstance(command, typer.core.TyperGroup):
        # the verb and what follows it (click keeps the verb apart, under a name that changed across versions)
        remaining = [*(getattr(context, "_protected_args", None) or getattr(context, "protected_args", [])),
                     *context.args]
        assert remaining, f"`gls {' '.join(arguments)}`: no verb"
        name, *rest = remaining
        sub = command.get_command(context, name)
        assert sub is not None, f"`gls {' '.join(arguments)}`: no verb {name!r}"
        command, context = sub, sub.make_context(name, rest, parent=context)
    return context


def test_readme_has_the_commands_this_test_checks() -> None:
    headings = [heading for heading, _ in blocks("bash")]
    assert any(h.startswith(FIRST_RUN) for h in headings), headings
    assert len(gls_commands()) >= 15, gls_commands()
    assert any(ENVIRONMENT in body for _, body in blocks("bash"))


@pytest.mark.parametrize("arguments", gls_commands(), ids=lambda args: " ".join(args)[:60])
def test_every_gls_command_in_the_readme_parses(arguments: list[str]) -> None:
    context = parse(arguments)
    if context.command.name == "train":
        config = ROOT / context.params["config"]
        assert config.is_file(), f"{config} does not exist"
        load_config(config, context.params["overrides"] or [])  # a ConfigError names the field that drifted


def test_a_command_with_an_unknown_option_or_verb_fails_to_parse() -> None:
    with pytest.raises(UsageError):
        parse(["train", "configs/tiny-digits-dp-pgpe.yaml", "--out", "x", "--no-such-option"])
    with pytest.raises(UsageError):
        parse(["evaluate", "runs/x", "--eps", "0.1", "--method", "zonotope"])
    with pytest.raises(AssertionError):
        parse(["no-such-verb"])


def test_the_python_example_runs() -> None:
    (_, body), = blocks("python")
    namespace: dict[str, object] = {}
    exec(compile(body, str(README), "exec"), namespace)  # noqa: S102 (the README's own example)
    loss = namespace["loss"]
    assert getattr(loss, "shape", None) == (256, 64), loss


@pytest.mark.slow
def test_first_run_block_runs_verbatim_in_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(ROOT / ".venv")  # what `scripts/bootstrap` would have created
    environment = next(body for _, body in blocks("bash") if ENVIRONMENT in body)
    first_run = next(body for heading, body in blocks("bash") if heading.startswith(FIRST_RUN))
    script = f"set -euo pipefail\n{environment}\n{first_run}"
    # A new shell: no activated environment, and the clone's sources ahead of the installed project's.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin").replace(f"{Path(sys.executable).parent}:", ""),
           "HOME": str(tmp_path), "PYTHONPATH": str(clone), "GLS_LOG_EVERY_S": "30"}
    done = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    for name in ("model.safetensors", "curves.png", "model.onnx"):
        assert (clone / "runs" / "tiny" / name).is_file(), name
    assert "certified_acc" in done.stdout and "verified" in done.stdout
