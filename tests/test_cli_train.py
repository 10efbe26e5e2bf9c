"""`gls train` and `gls evaluate` as a user runs them: real files; a real process where signals are tested."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from cli_runner import Ran, run_cli

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


def gls(*args: str, env: dict[str, str] | None = None) -> Ran:
    return run_cli(*args, env=env)


def run_files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


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


def test_resume_of_a_finished_run_changes_nothing_and_refuses_a_different_experiment(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "run"
    assert gls("train", str(config), "--out", str(out)).returncode == 0
    before = run_files(out)
    changed = gls("train", str(config), "--out", str(out), "--resume", "--set", "eps=0.05",
                  "--set", "pgpe.popsize=10")
    assert changed.returncode == 2
    assert "eps: cannot change when resuming (run has 0.02, config has 0.05)" in changed.stderr, changed.stderr
    assert "pgpe.popsize: cannot change" in changed.stderr
    resumed = gls("train", str(config), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "finished training at step 6; nothing to do" in resumed.stdout
    assert run_files(out) == before  # nothing rewritten


def test_resume_without_a_run_says_so(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    missing = gls("train", str(config), "--out", str(tmp_path / "nothing"), "--resume")
    assert missing.returncode == 2
    assert "no run to resume in" in missing.stderr and "start it without --resume" in missing.stderr


def test_extending_a_finished_run_equals_training_longer_from_the_start(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "estimator": "grad"}))
    short, long = tmp_path / "short", tmp_path / "long"
    assert gls("train", str(config), "--out", str(short)).returncode == 0
    extended = gls("train", str(config), "--out", str(short), "--resume", "--set", "schedule.epochs=3")
    assert extended.returncode == 0, extended.stderr
    assert "resuming with schedule.epochs: 1 -> 3" in extended.stderr
    assert yaml.safe_load((short / "config.yaml").read_text())["schedule"]["epochs"] == 3
    assert gls("train", str(config), "--out", str(long), "--set", "schedule.epochs=3").returncode == 0
    assert load_model(short)[1].equal(load_model(long)[1])
    strip = [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in read_metrics(short)]
    assert strip == [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in read_metrics(long)]
    fewer = gls("train", str(config), "--out", str(short), "--resume", "--set", "schedule.epochs=2")
    assert fewer.returncode == 2 and "already trained 3 epochs" in fewer.stderr


def test_sigint_writes_a_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "warmup": None, "evaluation": {"every_epochs": 100, "pgd_steps": 1,
                                      "pgd_restarts": 1},
                                      "schedule": {**CONFIG["schedule"], "epochs": 50, "steps_per_epoch": 10}}))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "gls_core.cli", "train", str(config), "--out", str(out)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(1 for _ in _lines(out / "metrics.jsonl")) < 5:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "checkpoint written" in stderr and f"--out {out} --resume" in stderr, stderr
    position = json.loads((out / "state.json").read_text())
    assert 0 < position["step"] < 500 and not position["finished"]
    assert (out / "curves.png").is_file()
    assert metadata_step(out) == position["step"]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def metadata_step(out: Path) -> int:
    return int(load_model(out)[2]["step"])


def test_progress_without_a_terminal_is_plain_lines(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    done = gls("train", str(config), "--out", str(tmp_path / "run"), env={"GLS_LOG_EVERY_S": "0"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any("step 3/6 (50.0%) warmup loss" in line and "ETA" in line for line in lines), done.stderr
    epochs = [line for line in lines if " epoch " in line and "natural" in line]
    assert len(epochs) == 3 and epochs[-1].startswith("main epoch 2 (step 6): natural"), epochs
    assert "(deeppoly, eps 0.02, 60 test inputs)" in epochs[-1]


def test_a_subset_larger_than_the_data_is_named(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "data": {**CONFIG["data"], "test_subset": 500}}))
    done = gls("train", str(config), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "warning: data.test_subset: 500 is more than the 297 examples of digits; using all 297" in done.stderr


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


def test_a_user_file_with_a_label_beyond_the_outputs_names_it(tmp_path: Path) -> None:
    import numpy as np

    labels = np.array([0, 1, 2, 12, 3, 4, 5, 6] * 8)
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32), y=labels)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "warmup": None, "data": {"dataset": "file", "input_like": "digits",
                                                                         "path": str(tmp_path / "data.npz"),
                                                                         "batch_size": 16}}))
    done = gls("train", str(config), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "label 12" in done.stderr and "index 3" in done.stderr, done.stderr
