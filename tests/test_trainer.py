"""The local trainer on real data: every estimator lowers its objective; resuming equals not stopping."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gls_core.bounds import KernelPlan
from gls_core.data import load_dataset
from gls_core.training import Trainer, load_model, parse_config, read_metrics
from gls_core.training.checkpoint import load_checkpoint, read_kernel_plan
from gls_core.training.estimators import Evaluated, Proposal
from gls_core.training.objective import Objective
from gls_core.training.points import evaluate_members
from gls_core.training.stages import objective_for
from gls_core.training.trainer import TrainData


@pytest.fixture(scope="module")
def digits() -> TrainData:
    return TrainData(load_dataset("digits", "train"), load_dataset("digits", "test", subset=100))


def digits_config(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seed": 1, "eps": 0.02, "data": {"dataset": "digits", "batch_size": 64, "test_subset": 100},
        "model": {"arch": "cnn3-tiny", "init": "kaiming"},
        "schedule": {"epochs": 2, "lr": 0.05, "lr_milestones": [], "eps_ramp_epochs": 0, "steps_per_epoch": 10},
        "evaluation": {"method": "deeppoly", "pgd_steps": 5, "pgd_restarts": 1}, "device": "cpu",
    }
    for key, value in fields.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return base


def objective_value(config_data: dict[str, Any], theta: torch.Tensor, data: TrainData) -> float:
    """The estimator's own objective at theta, on the first 256 training images."""
    config = parse_config(config_data)
    trainer_objective = objective_for(config, config.estimator)
    from gls_core.nets.zoo import network

    spec = network(config.model.arch, config.data.dataset)
    x, y = data.train.x[:256], data.train.y[:256]
    return float(trainer_objective.losses(spec, theta.unsqueeze(0), x, y, config.eps, seed=99)[0])


@pytest.mark.parametrize("fields", [
    {"estimator": "grad", "relaxation": None},
    {"estimator": "grad", "relaxation": "ibp", "model": {"arch": "fc-32x32", "init": "ibp"}},
    {"estimator": "pgd"},
    {"estimator": "rgs", "relaxation": "deeppoly", "rgs": {"sigma": 0.01}},
    {"estimator": "pgpe", "relaxation": "deeppoly", "pgpe": {"popsize": 64, "sigma_init": 0.01}},
    {"estimator": "pgpe", "relaxation": "alpha-crown", "pgpe": {"popsize": 64, "sigma_init": 0.01}},
], ids=["standard", "ibp-grad", "pgd", "deeppoly-rgs", "deeppoly-pgpe", "alpha-crown-pgpe"])
def test_every_estimator_lowers_its_objective(fields: dict[str, Any], digits: TrainData, tmp_path: Path) -> None:
    data = digits_config(**fields)
    config = parse_config(data)
    trainer = Trainer(config, tmp_path, data=digits)
    result = trainer.run()
    start = load_model_from_init(trainer)
    before, after = objective_value(data, start, digits), objective_value(data, result.theta, digits)
    assert after < 0.95 * before, (before, after)
    rows = read_metrics(tmp_path)
    epochs = [row for row in rows if row["kind"] == "epoch"]
    assert [row["epoch"] for row in epochs] == [0, 1, 2]
    assert len([row for row in rows if row["kind"] == "step"]) == 20
    assert epochs[-1]["natural_acc"] > epochs[0]["natural_acc"]


def load_model_from_init(trainer: Trainer) -> torch.Tensor:
    from gls_core.training.trainer import starting_weights

    return starting_weights(trainer.config, trainer.spec)


@pytest.mark.parametrize("fields", [
    {"estimator": "pgpe", "relaxation": "deeppoly", "pgpe": {"popsize": 8}, "warmup": {"epochs": 1, "lr": 0.01}},
    {"estimator": "rgs", "relaxation": "crown-ibp", "schedule": {"lr_milestones": [1], "eps_ramp_epochs": 1}},
], ids=["pgd-warmup-then-pgpe", "rgs-with-decay"])
def test_resume_equals_uninterrupted(fields: dict[str, Any], digits: TrainData, tmp_path: Path) -> None:
    config = parse_config(digits_config(**fields))
    whole = Trainer(config, tmp_path / "whole", data=digits).run()
    first = Trainer(config, tmp_path / "split", data=digits).run(stop_after_steps=4)
    assert not first.position.finished
    _, position = load_checkpoint(tmp_path / "split")
    assert position.step == 4
    second = Trainer(config, tmp_path / "split", data=digits).run(resume=True, stop_after_steps=5)
    assert second.position.step == 9
    third = Trainer(config, tmp_path / "split", data=digits).run(resume=True)
    assert third.position.finished
    assert torch.equal(whole.theta, third.theta)
    split_rows, whole_rows = read_metrics(tmp_path / "split"), read_metrics(tmp_path / "whole")
    strip = [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in whole_rows]
    assert [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in split_rows] == strip
    assert torch.equal(load_model(tmp_path / "split")[1], whole.theta)


def test_an_evaluator_interrupted_mid_step_keeps_the_steps_start_and_the_resume_equals_uninterrupted(
        digits: TrainData, tmp_path: Path) -> None:
    """The coordinator's evaluator raises Interrupted when a job is cancelled or its coordinator stops mid-step:
    the run ends as if stopped before that step, and resuming redoes it bit for bit."""
    config = parse_config(digits_config(estimator="pgpe", relaxation="deeppoly", pgpe={"popsize": 8}))
    whole = Trainer(config, tmp_path / "whole", data=digits).run()
    calls = 0

    def interrupted_at_step_six(proposal: Proposal, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                                eps: float, plan: KernelPlan | None) -> Evaluated:
        nonlocal calls
        calls += 1
        stopped = calls == 6
        return evaluate_members(trainer.spec, proposal, objective, x, y, eps, config.seed, config.block_members,
                                should_stop=lambda: stopped)

    trainer = Trainer(config, tmp_path / "split", data=digits, evaluator=interrupted_at_step_six)
    first = trainer.run()
    assert first.position.step == 5 and not first.position.finished
    assert load_checkpoint(tmp_path / "split")[1].step == 5
    assert len([row for row in read_metrics(tmp_path / "split") if row["kind"] == "step"]) == 5
    resumed = Trainer(config, tmp_path / "split", data=digits).run(resume=True)
    assert torch.equal(resumed.theta, whole.theta)


def test_the_kernel_plan_is_made_by_the_first_step_and_an_older_checkpoint_resumes_with_an_empty_one(
        digits: TrainData, tmp_path: Path) -> None:
    config = parse_config(digits_config(estimator="pgpe", relaxation="deeppoly", pgpe={"popsize": 8}))
    trainer = Trainer(config, tmp_path, data=digits)
    assert trainer.run(stop_after_steps=0).position.step == 0 and read_kernel_plan(tmp_path) is None  # not made yet
    trainer.run(resume=True, stop_after_steps=2)
    plan = read_kernel_plan(tmp_path)
    assert plan and plan == trainer.kernel_plan and all(key.startswith("('") for key in plan)
    position = json.loads((tmp_path / "state.json").read_text())
    del position["kernel_plan"]  # as written before plans were stored
    (tmp_path / "state.json").write_text(json.dumps(position))
    resumed = Trainer(config, tmp_path, data=digits)
    assert resumed.run(resume=True, stop_after_steps=1).position.step == 3
    assert resumed.kernel_plan == {} and read_kernel_plan(tmp_path) == {}  # kernels chosen untimed from here on


def test_warm_start_from_a_checkpoint(digits: TrainData, tmp_path: Path) -> None:
    warm = Trainer(parse_config(digits_config(estimator="pgd")), tmp_path / "pgd", data=digits).run()
    data = digits_config(estimator="rgs", relaxation="ibp",
                         model={"checkpoint": str(tmp_path / "pgd" / "model.safetensors")})
    trainer = Trainer(parse_config(data), tmp_path / "rgs", data=digits)
    assert torch.equal(load_model_from_init(trainer), warm.theta)
    wrong = digits_config(estimator="rgs", relaxation="ibp",
                          model={"arch": "fc-16", "checkpoint": str(tmp_path / "pgd")})
    with pytest.raises(ValueError, match="model.checkpoint holds cnn3-tiny-digits"):
        Trainer(parse_config(wrong), tmp_path / "bad", data=digits).run()


def test_noise_and_batches_depend_on_the_seed(digits: TrainData, tmp_path: Path) -> None:
    runs = [Trainer(parse_config(digits_config(estimator="rgs", relaxation="ibp", seed=seed)), tmp_path / str(seed),
                    data=digits).run(stop_after_steps=2) for seed in (1, 1, 2)]
    assert torch.equal(runs[0].theta, runs[1].theta)
    assert not torch.equal(runs[0].theta, runs[2].theta)


def test_corrupt_model_bytes_get_a_clear_error() -> None:
    from gls_core.training.checkpoint import model_from_bytes

    with pytest.raises(ValueError, match="upload.safetensors: not a readable safetensors file"):
        model_from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}", "upload.safetensors")
