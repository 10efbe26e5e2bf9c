"""The reproduction driver's accounting: compute as the paper counts it, and its plan of shipped configs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import reproduce
from bench.reproduce import PAPER, compute_curve, full_plan, member_samples, paper_member_samples, quick_plan
from gls_core.training import load_config
from gls_core.training.checkpoint import POSITION_FILE

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
                assert run.paper in PAPER, run.name
            for _, first, second, _ in plan.claims:
                assert {first, second} <= {run.name for run in plan.runs}
    assert {run.paper for run in full_plan().runs} >= set(PAPER)


def test_the_grad_runs_are_planned_at_both_learning_rates() -> None:
    """App. E.1 prints 5e-5; Shi et al.'s MNIST setting is 5e-4: both GRAD schedules are in the plan."""
    rates = {run.name: load_config(ROOT / run.config, list(run.overrides)).schedule.lr for run in full_plan().runs}
    assert rates["ibp-grad"] == rates["deeppoly-grad"] == 5e-5
    assert rates["ibp-grad-lr5e-4"] == rates["deeppoly-grad-lr5e-4"] == rates["deeppoly-rgs-lr5e-4"] == 5e-4
    assert rates["deeppoly-rgs"] == 5e-5


def test_an_unknown_run_name_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["reproduce", "--out", str(tmp_path / "runs"), "--runs", "ibp-grad,ibp-gard",
                                      "--doc", str(tmp_path / "doc.md")])
    with pytest.raises(SystemExit) as stopped:
        reproduce.main()
    assert stopped.value.code == 2
    assert "unknown run(s) ['ibp-gard']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_ordering_says_whether_each_claim_holds_and_what_is_missing() -> None:
    results = {"ibp-grad": {"certified_alpha-crown": 0.80}, "deeppoly-grad": {"certified_alpha-crown": 0.70},
               "deeppoly-pgpe": {"certified_alpha-crown": 0.75}}
    epochs = {"ibp-grad": (70, 70), "deeppoly-grad": (30, 70), "deeppoly-pgpe": (2, 150), "deeppoly-rgs": (0, 70)}
    lines = reproduce.ordering(results, epochs, quick_plan().claims)
    assert lines[0].startswith("- the paradox: DeepPoly-GRAD certifies less than IBP-GRAD: holds here (70.00% vs "
                               "80.00%, -10.00 points")
    assert "deeppoly-grad 30/70 epochs" in lines[0]
    assert lines[1].endswith("not measured yet (deeppoly-rgs not evaluated).")
    assert "DeepPoly-PGPE certifies more than DeepPoly-GRAD: holds here" in lines[2]
    assert lines[3].endswith("not measured yet (alphacrown-pgpe not evaluated).")
    assert "DeepPoly-PGPE certifies more than IBP-GRAD: does not hold here (75.00% vs 80.00%, -5.00 points" in lines[4]


def test_saved_results_keep_what_another_sitting_saved_meanwhile(tmp_path: Path) -> None:
    """Two sittings evaluating one run each: the second write keeps the first's result."""
    saved = tmp_path / "results.json"
    reproduce.save_result(saved, "deeppoly-grad-lr5e-4", {"certified_alpha-crown": 0.6})
    merged = reproduce.save_result(saved, "deeppoly-rgs-lr5e-4", {"certified_alpha-crown": 0.7})
    assert merged == {"deeppoly-grad-lr5e-4": {"certified_alpha-crown": 0.6},
                      "deeppoly-rgs-lr5e-4": {"certified_alpha-crown": 0.7}}
    assert reproduce.json.loads(saved.read_text()) == merged


def test_the_ordering_names_the_epoch_each_model_was_evaluated_at() -> None:
    results = {"ibp-grad": {"certified_alpha-crown": 0.80, "epoch": 70},
               "deeppoly-grad": {"certified_alpha-crown": 0.70, "epoch": 40}}
    lines = reproduce.ordering(results, {"ibp-grad": (70, 70), "deeppoly-grad": (55, 70)}, quick_plan().claims)
    assert "ibp-grad 70/70 epochs" in lines[0] and "deeppoly-grad 40/70 epochs" in lines[0]


def test_the_wall_time_curve_accumulates_the_main_stages_epoch_times() -> None:
    rows = [{"kind": "epoch", "stage": "init", "epoch": 0, "certified_acc": 0.1, "epoch_time_s": 99.0},
            {"kind": "epoch", "stage": "main", "epoch": 1, "certified_acc": 0.5, "epoch_time_s": 1800.0},
            {"kind": "step", "stage": "main", "step": 5},
            {"kind": "epoch", "stage": "main", "epoch": 2, "certified_acc": 0.6, "epoch_time_s": 3600.0}]
    assert reproduce.wall_curve(rows) == ([0.5, 1.5], [50.0, 60.0])


def test_a_run_stopped_inside_an_epoch_counts_the_fraction_it_trained(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs/mnist-cnn3tiny-deeppoly-pgpe.yaml")  # 117 steps of 512 per epoch
    rows = [{"kind": "epoch", "stage": "main", "epoch": e, "step": 117 * e, "certified_acc": 0.7} for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert reproduce.epochs_trained(tmp_path, config) == 2  # no checkpoint position: the epochs logged
    save_position = {"stage": 0, "epoch": 2, "batch": 39, "step": 273, "finished": False}
    (tmp_path / POSITION_FILE).write_text(json.dumps(save_position))
    assert reproduce.epochs_trained(tmp_path, config) == pytest.approx(2 + 39 / 117, abs=0.005)
    assert reproduce.epochs_text(reproduce.epochs_trained(tmp_path, config)) == "2.33"
    (tmp_path / POSITION_FILE).write_text(json.dumps({**save_position, "batch": 0, "epoch": 2, "step": 234}))
    assert reproduce.epochs_text(reproduce.epochs_trained(tmp_path, config)) == "2"


def test_the_recorded_command_leaves_out_where_the_report_went() -> None:
    argv = ["--doc", "/tmp/scratch/reproduction.md", "--runs", "deeppoly-rgs", "--doc=/tmp/x.md", "--budget", "2"]
    assert reproduce.recorded_command(argv) == "scripts/reproduce-gls --runs deeppoly-rgs --budget 2"
    assert reproduce.recorded_command(["--runs", "a b"]) == "scripts/reproduce-gls --runs 'a b'"


def test_a_sweep_run_stops_at_its_horizon_and_continues_without_it(tmp_path: Path) -> None:
    """A sweep trains the first epochs of the full schedule; dropping the horizon continues the same run."""
    small = ("data.train_subset=512", "data.test_subset=50", "data.batch_size=128", "schedule.epochs=3",
             "schedule.eps_ramp_epochs=1", "schedule.lr_milestones=[]", "evaluation.pgd_steps=2")
    swept = reproduce.Run("ibp", "configs/mnist-cnn3tiny-ibp-grad.yaml", small, horizon=1)
    warm = tmp_path / "pgd" / "model.safetensors"
    first = reproduce.train(swept, tmp_path, 600.0, warm)
    assert first["step"] == 4 and not first["finished"]
    assert reproduce.done_training(swept, tmp_path / "ibp")
    assert reproduce.train(swept, tmp_path, 600.0, warm)["step"] == 4  # nothing more at the horizon
    full = reproduce.Run("ibp", "configs/mnist-cnn3tiny-ibp-grad.yaml", small)
    assert not reproduce.done_training(full, tmp_path / "ibp")
    rest = reproduce.train(full, tmp_path, 600.0, warm)
    assert rest["finished"] and rest["step"] == 12
    rows = [json.loads(line) for line in (tmp_path / "ibp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch" and r["stage"] == "main"] == [1, 2, 3]


def test_the_sweep_table_reads_each_run_at_the_same_epochs(tmp_path: Path) -> None:
    plan = full_plan()
    sweep = [run for run in plan.runs if run.name.startswith("deeppoly-rgs-lr5e-4-sigma") and "seed" not in run.name]
    assert {run.name for run in sweep} == {f"deeppoly-rgs-lr5e-4-sigma{s}" for s in ("3e-3", "1e-2", "3e-2")}
    for run in sweep:
        config = load_config(ROOT / run.config, list(run.overrides))
        assert config.schedule.epochs == 70 and config.schedule.lr == 5e-4
        assert run.horizon == (None if run.name.endswith(reproduce.SWEEP_BEST) else 20)
    seeds = [load_config(ROOT / run.config, list(run.overrides)).seed for run in plan.runs if "seed" in run.name]
    assert sorted(seeds) == [1, 1, 1, 2, 2, 2]
    folder = tmp_path / "deeppoly-rgs-lr5e-4-sigma1e-2"
    folder.mkdir()
    rows = [{"kind": "epoch", "stage": "main", "epoch": e, "step": e, "certified_acc": e / 100} for e in (10, 20)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    table = reproduce.sweep_table(plan, tmp_path, epochs=(10, 15, 20))
    line = next(line for line in table.splitlines() if "sigma 1e-2" in line)
    assert line.split("|")[2:5] == [" 10.00 ", " - ", " 20.00 "]
    assert "IBP-GRAD (lr 5e-4)" in table


def _finished_run(folder: Path, certified: list[float]) -> None:
    """A run folder as training leaves it: a finished position and one main-stage evaluation per epoch."""
    from gls_core.training.checkpoint import METRICS_FILE

    folder.mkdir(parents=True)
    (folder / POSITION_FILE).write_text(json.dumps({"stage": 0, "epoch": 0, "batch": 0, "step": 9,
                                                    "finished": True}))
    rows = [{"kind": "epoch", "stage": "main", "epoch": e + 1, "step": e + 1, "certified_acc": c}
            for e, c in enumerate(certified)]
    (folder / METRICS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_seed_groups_report_mean_spread_and_a_verdict_per_claim(tmp_path: Path) -> None:
    plan = full_plan()
    ibp, grad, rgs = reproduce.SEED_GROUPS
    for seed, suffix in enumerate(("", "-seed1", "-seed2")):
        _finished_run(tmp_path / f"{ibp}{suffix}", [0.5, 0.77 + 0.01 * seed])
        _finished_run(tmp_path / f"{grad}{suffix}", [0.5, 0.58 + 0.01 * seed])
    _finished_run(tmp_path / rgs, [0.5, 0.58])  # one seed: no verdict can rest on it
    (tmp_path / f"{rgs}-seed1").mkdir()  # started, not finished: not counted
    results = {f"{ibp}-seed1": {"certified_alpha-crown": 0.80}}  # one seed evaluated: the per-epoch measure decides

    table = reproduce.seed_table(plan, tmp_path, results)
    assert "| 3/3 | 78.00 ± 1.00 (77.0, 78.0, 79.0) | 80.00 (80.0) |" in table
    assert "| 3/3 | 59.00 ± 1.00 (58.0, 59.0, 60.0) | - |" in table
    assert "| 1/3 | 58.00 (58.0) | - |" in table

    paradox, resolves, improves = reproduce.seed_claims(plan, tmp_path, results)
    assert paradox.startswith("- the paradox") and "**holds**" in paradox and "DeepPoly-certified" in paradox
    assert "+19.00 points" in paradox
    assert "**inconclusive (fewer than two seeds on a side)**" in resolves
    assert "**inconclusive" in improves


def test_a_verdict_weighs_the_difference_against_the_spread_across_seeds() -> None:
    close = reproduce.SeedValues({0: 0.60, 1: 0.64, 2: 0.56}, "DeepPoly")
    other = reproduce.SeedValues({0: 0.59, 1: 0.61, 2: 0.57}, "DeepPoly")
    assert reproduce.verdict(close, other, 1).startswith("inconclusive (the difference is within")
    far = reproduce.SeedValues({0: 0.80, 1: 0.81, 2: 0.79}, "DeepPoly")
    assert reproduce.verdict(far, other, 1) == "holds"
    assert reproduce.verdict(far, other, -1) == "does not hold"
