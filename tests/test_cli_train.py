"""`gls train` and `gls evaluate` as a user runs them: real processes, real files."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from gls_core.training import load_model, read_metrics

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "seed": 3, "estimator": "pgpe", "relaxation": "deeppoly", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 32, "test_subset": 60},
    "model": {"arch": "cnn3-tiny"},
    "warmup": {"estimator": "pgd", "epochs": 1, "lr": 0.05},
    "schedule": {"epochs": 1, "lr": 0.01, "lr_milestones": [], "eps_ramp_epochs": 0, "steps_per_epoch": 3},
    "pgpe": {"popsize": 8},
    "evaluation": {"pgd_steps": 3, "pgd_restarts": 1},
}


def gls(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_train_writes_the_run_directory_and_evaluate_reads_it(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "run"
    done = gls("train", str(config), "--out", str(out), "--set", "pgpe.sigma_init=0.01")
    assert done.returncode == 0, done.stderr
    for name in ("model.safetensors", "config.yaml", "metrics.jsonl", "curves.png", "state.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "config.yaml").read_text())["pgpe"]["sigma_init"] == 0.01
    rows = read_metrics(out)
    assert [row["stage"] for row in rows if row["kind"] == "epoch"] == ["init", "warmup", "main"]
    assert len([row for row in rows if row["kind"] == "step"]) == 6
    spec, theta, metadata = load_model(out)
    assert spec.name == "cnn3-tiny-digits" and metadata["step"] == "6" and theta.shape == (spec.num_params,)

    evaluated = gls("evaluate", str(out), "--eps", "0.02", "--method", "ibp", "--json", "--limit", "50",
                    "--pgd-steps", "3")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["n"] == 50 and result["method"] == "ibp"
    assert 0 <= result["certified_acc"] <= result["adversarial_acc"] <= result["natural_acc"] <= 1

    again = gls("train", str(config), "--out", str(out))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert load_model(out)[1].equal(theta)  # nothing stored was touched


def test_resume_continues_and_refuses_a_different_config(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "run"
    assert gls("train", str(config), "--out", str(out)).returncode == 0
    changed = gls("train", str(config), "--out", str(out), "--resume", "--set", "eps=0.05")
    assert changed.returncode == 2 and "differs from" in changed.stderr
    resumed = gls("train", str(config), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr


def test_bad_config_and_bad_arguments_get_clear_errors(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "pgpe": {"popsize": 9}, "learning_rate": 1}))
    done = gls("train", str(config), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "pgpe.popsize: popsize must be even" in done.stderr and "learning_rate: unknown key" in done.stderr
    assert not (tmp_path / "run").exists()
    missing = gls("evaluate", str(tmp_path / "nothing"), "--eps", "0.1")
    assert missing.returncode == 2 and "no model at" in missing.stderr
    config.write_text(yaml.safe_dump(CONFIG))
    method = gls("evaluate", str(tmp_path), "--eps", "0.1", "--method", "zonotope")
    assert method.returncode == 2 and "unknown method 'zonotope'" in method.stderr
