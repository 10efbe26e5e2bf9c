"""The reproduction driver's accounting: compute as the paper counts it, and its plan of shipped configs."""

from __future__ import annotations

from pathlib import Path

from bench.reproduce import PAPER, compute_curve, full_plan, member_samples, paper_member_samples, quick_plan
from gls_core.training import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_paper_compute_follows_its_schedules() -> None:
    assert paper_member_samples("grad") == 70 * 60_000
    assert paper_member_samples("rgs") == 2 * 70 * 60_000
    assert paper_member_samples("pgpe") == 150 * (60_000 // 512) * 512 * 256


def test_member_samples_count_the_main_stage_only() -> None:
    config = load_config(ROOT / "configs/mnist-cnn3tiny-deeppoly-pgpe.yaml")
    rows = [{"kind": "step", "stage": "warmup", "step": 1}] + [{"kind": "step", "stage": "main", "step": s}
                                                                for s in (2, 3, 4)]
    assert member_samples(rows, config) == 3 * 512 * 256
    evaluations = [{"kind": "epoch", "stage": "init", "step": 0, "certified_acc": 0.0},
                   {"kind": "epoch", "stage": "main", "step": 117, "certified_acc": 0.5}]
    assert compute_curve(evaluations, config) == ([117 * 512 * 256], [50.0])


def test_every_planned_run_is_a_valid_config_and_has_the_papers_numbers() -> None:
    for plan in (full_plan(), quick_plan()):
        for run in plan.runs:
            load_config(ROOT / run.config, list(run.overrides))
            if run.name not in ("pgd",) and not run.name.endswith("-warm"):
                assert run.name in PAPER, run.name
    assert {run.name for run in full_plan().runs} >= set(PAPER)
