"""`gls train --resume` over a damaged run: one `error:` line naming the file and the damage, exit 2, nothing changed.

The run is a real interrupted run (the trainer stopped after two steps, as Ctrl-C leaves it); each
case damages one file of a copy, resumes it as a user would, and compares every file of the run,
bytes and modification times, before and after.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import run_cli

from gls_core.nets.zoo import network
from gls_core.training import Trainer, load_config, save_model
from gls_core.training.checkpoint import load_checkpoint

CONFIG = {
    "seed": 3, "estimator": "pgpe", "relaxation": "deeppoly", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 32, "test_subset": 40},
    "model": {"arch": "cnn3-tiny"},
    "warmup": {"estimator": "pgd", "epochs": 1, "lr": 0.05},
    "schedule": {"epochs": 1, "lr": 0.01, "lr_milestones": [], "eps_ramp_epochs": 0, "steps_per_epoch": 3},
    "pgpe": {"popsize": 8},
    "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
}
Damage = Callable[[Path], None]


def truncate(name: str, keep: float = 0.5) -> Damage:
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[:int(len(data) * keep)])

    return damage


def replace(name: str, content: str | bytes) -> Damage:
    def damage(run: Path) -> None:
        (run / name).write_bytes(content.encode() if isinstance(content, str) else content)

    return damage


def garble_header(run: Path) -> None:
    data = bytearray((run / "state.safetensors").read_bytes())
    data[8:40] = b"#" * 32  # inside the JSON header
    (run / "state.safetensors").write_bytes(bytes(data))


def garble_metrics_line(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"kind": "step", "st\n'
    (run / "metrics.jsonl").write_text("".join(lines))


def other_model(run: Path) -> None:
    spec = network("fc-16", "digits")
    save_model(run / "model.safetensors", torch.zeros(spec.num_params), "fc-16", "digits", {"step": "2"})


def older_model(run: Path) -> None:
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data.replace(b'"step":"2"', b'"step":"1"'))


def foreign_kernel_plan(run: Path) -> None:
    position = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**position, "kernel_plan": ["transpose", "native"]}))


CASES: dict[str, tuple[Damage, str, str]] = {
    # case: (damage, file named, what the message says is wrong)
    "model-truncated": (truncate("model.safetensors"), "model.safetensors", "not a readable safetensors file"),
    "model-empty": (truncate("model.safetensors", 0.0), "model.safetensors", "not a readable safetensors file"),
    "model-of-another-network": (other_model, "model.safetensors", "fc-16-digits"),
    "model-older-than-checkpoint": (older_model, "model.safetensors", "older than the checkpoint's step 2"),
    "state-truncated": (truncate("state.safetensors"), "state.safetensors", "not a readable safetensors file"),
    "state-garbled-header": (garble_header, "state.safetensors", "not a readable safetensors file"),
    "position-truncated": (truncate("state.json"), "state.json", "not valid JSON"),
    "position-binary": (replace("state.json", b"\xff\xfe\x00garbage"), "state.json", "not valid JSON"),
    "position-wrong-type": (replace("state.json", json.dumps({"stage": "0", "epoch": 0, "batch": 2, "step": 2,
                                                              "finished": False})),
                            "state.json", "stage must be a whole number >= 0, got '0'"),
    "position-missing-key": (replace("state.json", json.dumps({"stage": 0, "epoch": 0, "step": 2,
                                                               "finished": False})),
                             "state.json", "expected a JSON object with the keys"),
    "position-ahead-of-state": (replace("state.json", json.dumps({"stage": 0, "epoch": 0, "batch": 3, "step": 3,
                                                                  "finished": False})),
                                "state.json", "disagree on the step"),
    "position-in-no-stage": (replace("state.json", json.dumps({"stage": 2, "epoch": 0, "batch": 2, "step": 2,
                                                               "finished": False})),
                             "state.json", "has only warmup and main"),
    "metrics-garbled-line": (garble_metrics_line, "metrics.jsonl", "line 2 is not valid JSON"),
    "metrics-truncated": (truncate("metrics.jsonl", 0.3), "metrics.jsonl", "the checkpoint is at step 2"),
    "config-not-yaml": (replace("config.yaml", "data: [digits\nseed: 3\n"), "config.yaml", "not valid YAML"),
    "position-kernel-plan-not-an-object": (foreign_kernel_plan, "state.json",
                                           "kernel_plan must be null or an object of kernel names"),
}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config file, run directory) of a run stopped after 2 of its 6 steps."""
    root = tmp_path_factory.mktemp("interrupted")
    config = root / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = Trainer(load_config(config), root / "run").run(stop_after_steps=2)
    assert not result.position.finished and result.position.step == 2
    return config, root / "run"


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the run (hidden temporaries included): its bytes and modification time."""
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(run.iterdir())}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("extend", [False, True], ids=["resume", "resume-and-extend"])
def test_a_damaged_run_is_refused_and_left_as_it_was(case: str, extend: bool, interrupted: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    config, original = interrupted
    run = tmp_path / "run"
    shutil.copytree(original, run)
    damage, named, wrong = CASES[case]
    damage(run)
    before = snapshot(run)
    extra = ["--set", "schedule.epochs=2"] if extend else []
    refused = run_cli("train", str(config), "--out", str(run), "--resume", *extra)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot resume: "), refused.stderr
    assert str(run / named) in lines[0] and wrong in lines[0], lines[0]
    assert snapshot(run) == before


def test_the_undamaged_run_resumes(interrupted: tuple[Path, Path], tmp_path: Path) -> None:
    config, original = interrupted
    run = tmp_path / "run"
    shutil.copytree(original, run)
    load_checkpoint(run, load_config(run / "config.yaml"))  # the checks pass on what the trainer wrote
    resumed = run_cli("train", str(config), "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run)[1].finished


def test_a_torn_last_metrics_line_is_an_uncommitted_row(interrupted: tuple[Path, Path], tmp_path: Path) -> None:
    config, original = interrupted
    run = tmp_path / "run"
    shutil.copytree(original, run)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "step", "stage": "warmup", "ep')  # the process died while appending step 3
    resumed = run_cli("train", str(config), "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"kind": "step"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]
