"""Verbs that can run for minutes report progress on stderr, as plain lines when not on a terminal.

Each verb runs as a user runs it (the `gls` app in this process, whose output is not a terminal)
with ``GLS_LOG_EVERY_S=0``, so every progress update writes its line; stdout keeps only the
result, and with ``--json`` it still parses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_runner import Ran, run_cli, train_run

# standard training, 40 steps: about 60% of the first test images right, so the verifier has inputs to decide
CONFIG = {
    "seed": 3, "estimator": "grad", "relaxation": "none", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 32, "test_subset": 40},
    "model": {"arch": "cnn3-tiny"},
    "schedule": {"epochs": 1, "lr": 0.02, "lr_milestones": [], "eps_ramp_epochs": 0, "steps_per_epoch": 40},
    "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
}
EVERY_UPDATE = {"GLS_LOG_EVERY_S": "0"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("progress"), CONFIG)


def progress(ran: Ran, description: str, unit: str) -> list[tuple[int, int]]:
    """(done, total) of each plain progress line ``HH:MM:SS DESCRIPTION UNIT done/total (..%)`` on stderr."""
    pattern = re.compile(rf"^\d\d:\d\d:\d\d {re.escape(description)} {unit} (\d+)/(\d+) \(")
    return [(int(m[1]), int(m[2])) for line in ran.stderr.splitlines() if (m := pattern.match(line))]


def test_evaluate_json_reports_each_batch_on_stderr(run: Path) -> None:
    ran = run_cli("evaluate", str(run), "--eps", "0.02", "--method", "ibp", "--json", "--limit", "50",
                  "--batch-size", "20", "--pgd-steps", "2", env=EVERY_UPDATE)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["n"] == 50  # stdout is the JSON alone
    assert progress(ran, "ibp eps=0.02", "input") == [(20, 50), (40, 50), (50, 50)], ran.stderr
    assert "inputs/s, ETA" in ran.stderr


def test_evaluate_complete_reports_each_decided_input_within_a_batch(run: Path) -> None:
    ran = run_cli("evaluate", str(run), "--eps", "0.01", "--method", "complete", "--limit", "12", "--timeout", "2",
                  "--pgd-steps", "2", "--json", env=EVERY_UPDATE)
    assert ran.returncode == 0, ran.stderr
    correct = round(json.loads(ran.stdout)["natural_acc"] * 12)
    assert correct > 1
    done = [count for count, total in progress(ran, "complete eps=0.01", "input")]
    # one batch, yet a line per input the verifier decided (misclassified ones are not verified)
    assert len(done) >= correct and done[-1] == 12 and done == sorted(set(done)), ran.stderr


def test_verify_reports_each_input_and_a_property_says_it_started(run: Path, tmp_path: Path) -> None:
    verdicts = tmp_path / "verdicts.json"
    ran = run_cli("verify", str(run), "--eps", "0.01", "--limit", "3", "--timeout", "1", "--json", str(verdicts),
                  env=EVERY_UPDATE)
    assert ran.returncode == 0, ran.stderr
    assert progress(ran, "verify", "input") == [(1, 3), (2, 3), (3, 3)], ran.stderr
    assert json.loads(verdicts.read_text())["summary"]["n"] == 3
    assert "verify input" not in ran.stdout  # the table alone

    prop = tmp_path / "box.vnnlib"
    prop.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(64))
                    + "".join(f"(declare-const Y_{j} Real)\n" for j in range(10))
                    + "".join(f"(assert (>= X_{i} 0.4))\n(assert (<= X_{i} 0.6))\n" for i in range(64))
                    + "(assert (>= Y_1 Y_0))\n")
    answered = run_cli("verify", str(run), str(prop), "--timeout", "1", env=EVERY_UPDATE)
    assert answered.returncode == 0, answered.stderr
    assert f"verifying {prop} on {run} (at most 1 s)" in answered.stderr
    assert answered.stdout.strip() in ("sat", "unsat", "timeout", "unknown")


def test_landscape_reports_each_chunk_and_times_each_relaxation_on_its_own(run: Path, tmp_path: Path) -> None:
    ran = run_cli("landscape", str(run), "--out", str(tmp_path / "land.png"), "--eps", "0.02", "--methods",
                  "ibp,deeppoly", "--points", "3", "--sigmas", "1e-3", "--samples", "2", "--limit", "8",
                  env=EVERY_UPDATE)
    assert ran.returncode == 0, ran.stderr
    # 3 points, each with 2 perturbations: 9 members per relaxation, one chunk each
    assert progress(ran, "landscape", "member") == [(9, 18), (18, 18)], ran.stderr
    first = next(line for line in ran.stderr.splitlines() if "member 9/18" in line)
    assert " ibp | " in first and "if deeppoly runs at ibp's rate" in first, first
    assert ran.stdout.strip() == f"wrote {tmp_path / 'land.png'}"
