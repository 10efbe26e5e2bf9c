"""Training configs: presets load, round-trip, and bad input gets an error naming the field."""

import re
from pathlib import Path

import pytest

from gls_core.data import TRAIN_SIZES
from gls_core.evaluation import DEFAULT_COMPLETE_TIMEOUT, DEFAULT_PGD_RESTARTS, DEFAULT_PGD_STEPS
from gls_core.training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_warnings,
    dump_config,
    load_config,
    parse_config,
)
from gls_core.training.schedules import Schedule, linear_ramp, smooth_ramp
from gls_core.training.stages import build_stages
from gls_core.training.trainer import steps_per_epoch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_preset_is_valid_and_round_trips(tmp_path: Path) -> None:
    presets = sorted(CONFIGS.glob("*.yaml"))
    assert len(presets) >= 10
    for preset in presets:
        config = load_config(preset)
        copy = tmp_path / preset.name
        copy.write_text(dump_config(config))
        assert load_config(copy) == config, preset.name


@pytest.mark.parametrize(("data", "fragment"), [
    ({"estimator": "sgd"}, "estimator: Input should be 'grad', 'pgd', 'pgpe' or 'rgs'"),
    ({"relaxation": "zonotope"}, "relaxation: unknown relaxation 'zonotope'"),
    ({"eps": -0.1}, "eps: Input should be greater than or equal to 0"),
    ({"eps": 5}, "eps: Input should be less than or equal to 1"),
    ({"evaluation": {"eps": 1.5}}, "evaluation.eps: Input should be less than or equal to 1"),
    ({"learning_rate": 0.1}, "learning_rate: unknown key"),
    ({"pgpe": {"popsize": 7}}, "pgpe.popsize: popsize must be even"),
    ({"pgpe": {"sigma": 0.1}}, "pgpe.sigma: unknown key"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset: unknown dataset 'imagenet'"),
    ({"data": {"batch_size": 0}}, "data.batch_size: Input should be greater than 0"),
    ({"model": {"arch": "resnet"}}, "model.arch: unknown architecture 'resnet'"),
    ({"schedule": {"lr_milestones": [60, 50]}}, "schedule.lr_milestones: lr_milestones must be positive and incr"),
    ({"estimator": "grad", "relaxation": "alpha-crown"}, "has no weight gradients; train it with estimator pgpe"),
    ({"estimator": "pgd", "relaxation": "ibp"}, "set relaxation to none"),
    ({"data": {"dataset": "file"}}, "needs data.path"),
])
def test_bad_values_name_the_field(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data, "job.yaml")
    assert fragment in str(error.value)
    assert "job.yaml" in str(error.value)


def header(preset: Path) -> str:
    """The comment block at the top of a preset, as one line."""
    lines = []
    for line in preset.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def stage_steps(config: TrainConfig) -> tuple[int, dict[str, int]]:
    """Steps per epoch and steps of each stage, as the trainer computes them for the published training split."""
    examples = TRAIN_SIZES[config.data.dataset]
    per_epoch = steps_per_epoch(config, min(examples, config.data.train_subset or examples))
    return per_epoch, {stage.name: stage.epochs * per_epoch for stage in build_stages(config, per_epoch)}


@pytest.mark.parametrize("preset", sorted(path.stem for path in CONFIGS.glob("*.yaml")))
def test_step_counts_in_preset_comments_are_the_configs(preset: str) -> None:
    path = CONFIGS / f"{preset}.yaml"
    per_epoch, steps = stage_steps(load_config(path))
    comment = header(path)
    stated = {int(number) for number in re.findall(r"(\d+) (?:[\w-]+ )?steps\b", comment)}
    assert stated <= {per_epoch, *steps.values()}, (comment, per_epoch, steps)
    for epochs, each in re.findall(r"(\d+) epochs of (\d+) steps", comment):
        assert int(each) == per_epoch and int(epochs) * per_epoch in steps.values(), comment


@pytest.mark.parametrize(("preset", "main"), [("tiny-digits-dp-pgpe", "DeepPoly-PGPE"),
                                              ("demo-mnist-cnn3tiny-dp-pgpe", "PGPE"),
                                              ("quick-mnist-cnn3tiny-dp-pgpe", "PGPE")])
def test_the_small_presets_say_how_many_steps_each_stage_runs(preset: str, main: str) -> None:
    path = CONFIGS / f"{preset}.yaml"
    config = load_config(path)
    per_epoch, steps = stage_steps(config)
    assert config.warmup is not None
    comment = header(path)
    assert f"{steps['warmup']} PGD steps ({config.warmup.epochs} epochs of {per_epoch} steps)" in comment, comment
    assert f"{steps['main']} {main} steps" in comment, comment


@pytest.mark.parametrize(("data", "fragment"), [
    ({"pgpe": {"popsise": 16}}, "pgpe.popsise: unknown key; did you mean pgpe.popsize?"),
    ({"pgep": {"popsize": 16}}, "pgep: unknown key; did you mean pgpe?"),
    ({"warmup": {"epohcs": 2}}, "warmup.epohcs: unknown key; did you mean warmup.epochs?"),
    ({"data": {"batchsize": 64}}, "data.batchsize: unknown key; did you mean data.batch_size?"),
])
def test_a_misspelled_key_gets_the_nearest_field(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data, "job.yaml")
    assert fragment in str(error.value)


def test_a_misspelled_key_in_a_file_or_a_set_gets_the_nearest_field(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("pgpe:\n  popsise: 16\n")
    with pytest.raises(ConfigError, match=r"pgpe.popsise: unknown key; did you mean pgpe.popsize\?"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"schedule.epoch: unknown key; did you mean schedule.epochs\?"):
        load_config(CONFIGS / "tiny-digits-dp-pgpe.yaml", ["schedule.epoch=3"])
    with pytest.raises(ConfigError) as error:
        parse_config({"bogus": 1})
    assert str(error.value).endswith("bogus: unknown key")  # nothing close: no guess


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"eps": -1, "seed": -2, "bogus": 1})
    message = str(error.value)
    assert "eps:" in message and "seed:" in message and "bogus: unknown key" in message


def test_yaml_errors_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("estimator: [grad\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("estimator: rgs\nrelaxation: deeppoly\n")
    config = load_config(path, ["eps=0.3", "schedule.lr_milestones=[5, 8]", "pgpe.popsize=64", "warmup.epochs=2",
                                "relaxation=none"])
    assert config.eps == 0.3 and config.schedule.lr_milestones == [5, 8] and config.pgpe.popsize == 64
    assert config.warmup is not None and config.warmup.epochs == 2 and config.relaxation is None
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["eps"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"eps": 0.1}, ["eps.x=1"])


def test_defaults_are_the_papers() -> None:
    config = TrainConfig()
    assert config.pgpe.popsize == 256 and config.pgpe.sigma_init == 1e-3
    assert config.rgs.samples == 2 and config.rgs.sigma == 1e-3 and config.rgs.sigma_decay == 0.4
    assert config.schedule.lr == 5e-5 and config.schedule.lr_milestones == [50, 60] and config.schedule.lr_decay == 0.2
    assert config.alpha.steps == 1 and config.alpha.step_size == 0.5 and config.alpha.init == 0.5


def test_eps_ramps_reach_the_target_without_jumps() -> None:
    for ramp in (smooth_ramp, linear_ramp):
        values = [ramp(step, 10, 100, 0.3) for step in range(0, 130)]
        assert values[:11] == [0.0] * 11 and values[110:] == [0.3] * 20
        assert all(b >= a for a, b in zip(values, values[1:], strict=False))
        assert max(b - a for a, b in zip(values, values[1:], strict=False)) < 0.3 / 100 * 1.5
    assert smooth_ramp(20, 10, 100, 0.3) < linear_ramp(20, 10, 100, 0.3)  # slow start


def test_schedule_decays_lr_and_sigma_after_milestones() -> None:
    config = TrainConfig.model_validate({"schedule": {"epochs": 10, "lr": 1.0, "lr_milestones": [3, 6],
                                                      "lr_decay": 0.5, "eps_zero_epochs": 1, "eps_ramp_epochs": 2}})
    schedule = Schedule(config.schedule, eps=0.2, steps_per_epoch=4)
    assert [schedule.at(step).lr for step in (0, 11, 12, 23, 24, 39)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert schedule.at(24, sigma_decay=0.4).sigma_scale == pytest.approx(0.16)
    assert schedule.eps_at(3) == 0.0 and schedule.eps_at(12) == pytest.approx(0.2)
    assert Schedule(config.schedule, eps=0.2, steps_per_epoch=4, anneal_eps=False).eps_at(0) == 0.2


# Meaning across fields -------------------------------------------------------------------------------------

README_RGS = CONFIGS / "mnist-cnn3-deeppoly-rgs.yaml"
SHORT_RGS = ["schedule.epochs=5", "schedule.eps_ramp_epochs=2", "schedule.lr_milestones=[3, 4]"]


def test_a_short_schedule_keeping_the_long_ramp_and_milestones_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(README_RGS, ["schedule.epochs=5"])
    lines = str(error.value).splitlines()
    assert lines[0] == f"invalid training config {README_RGS}:"
    milestones = next(line for line in lines if line.startswith("  schedule.lr_milestones: "))
    ramp = next(line for line in lines if line.startswith("  schedule.eps_ramp_epochs: "))
    assert "[50, 60] must lie within 1..4" in milestones
    assert "set schedule.lr_milestones to epochs below 5" in milestones
    assert "0 + 20 = 20 epochs, but schedule.epochs is 5" in ramp
    assert "set schedule.eps_ramp_epochs to at most 5" in ramp
    assert len(lines) == 3
    config = load_config(README_RGS, SHORT_RGS)
    assert (config.schedule.epochs, config.schedule.eps_ramp_epochs, config.schedule.lr_milestones) == (5, 2, [3, 4])


@pytest.mark.parametrize(("data", "fragment"), [
    ({"schedule": {"epochs": 5}}, "schedule.eps_ramp_epochs: eps reaches its target only after"),  # the defaults too
    ({"schedule": {"epochs": 5, "eps_ramp_epochs": 0}}, "schedule.lr_milestones: [50, 60] must lie within 1..4"),
    ({"schedule": {"epochs": 1, "eps_ramp_epochs": 0}}, "schedule.lr_milestones: [50, 60] cannot apply"),
    ({"schedule": {"epochs": 10, "lr_milestones": [5, 10], "eps_ramp_epochs": 2}}, "must lie within 1..9"),
    ({"schedule": {"lr_milestones": [5, 5]}}, "schedule.lr_milestones: lr_milestones must be positive and increasing"),
    ({"schedule": {"epochs": 10, "lr_milestones": [], "eps_zero_epochs": 4, "eps_ramp_epochs": 7}},
     "schedule.eps_ramp_epochs: eps reaches its target only after eps_zero_epochs + eps_ramp_epochs = 4 + 7 = 11"),
    ({"schedule": {"epochs": 10, "lr_milestones": [], "eps_zero_epochs": 10, "eps_ramp_epochs": 0}},
     "schedule.eps_zero_epochs: all 10 epochs of the stage (schedule.epochs) would train at eps = 0"),
    ({"warmup": {"epochs": 2, "eps_ramp_epochs": 3}}, "warmup.eps_ramp_epochs: eps reaches its target only after"),
    ({"warmup": {"epochs": 2, "eps_zero_epochs": 2}}, "warmup.eps_zero_epochs: all 2 epochs of the stage"),
    ({"data": {"train_subset": 100}}, "data.batch_size: 512 is more than the 100 training examples (data.train_sub"),
    ({"data": {"dataset": "digits", "batch_size": 2000}}, "more than the 1500 training examples (the digits training"),
])
def test_fields_that_contradict_each_other_name_the_field(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data, "job.yaml")
    assert fragment in str(error.value), str(error.value)


@pytest.mark.parametrize("data", [
    {"schedule": {"epochs": 5, "eps_zero_epochs": 1, "eps_ramp_epochs": 4, "lr_milestones": [1, 4]}},  # edges
    {"schedule": {"epochs": 1, "eps_ramp_epochs": 0, "lr_milestones": []}},
    {"warmup": {"epochs": 2, "eps_zero_epochs": 1, "eps_ramp_epochs": 1}},
    {"data": {"dataset": "digits", "batch_size": 1500}, "schedule": {"epochs": 3, "eps_ramp_epochs": 3,
                                                                    "lr_milestones": [2]}},
    {"data": {"train_subset": 512}},
    {"eps": 1, "evaluation": {"eps": 1}},
])
def test_consistent_schedules_at_the_edges_are_accepted(data: dict) -> None:
    parse_config(data)


def test_a_cap_on_steps_above_the_epoch_is_a_warning_not_an_error() -> None:
    config = parse_config({"data": {"train_subset": 2000, "batch_size": 500}, "schedule": {"steps_per_epoch": 5}})
    assert config_warnings(config) == ["schedule.steps_per_epoch: 5 is more than the 4 full batches of an epoch "
                                       "(2000 mnist training examples / data.batch_size 500), so it has no effect"]
    assert config_warnings(parse_config({"schedule": {"steps_per_epoch": 4}, "data": {"train_subset": 2000,
                                                                                      "batch_size": 500}})) == []
    for preset in sorted(CONFIGS.glob("*.yaml")):
        assert config_warnings(load_config(preset)) == [], preset.name


def test_per_epoch_evaluation_shares_gls_evaluates_defaults_or_says_why_not() -> None:
    evaluation = TrainConfig().evaluation
    assert evaluation.alpha_steps is None and evaluation.complete_timeout == DEFAULT_COMPLETE_TIMEOUT
    fields = type(evaluation).model_fields
    assert evaluation.pgd_steps < DEFAULT_PGD_STEPS and evaluation.pgd_restarts < DEFAULT_PGD_RESTARTS
    assert f"lighter than `gls evaluate`'s {DEFAULT_PGD_STEPS} steps" in (fields["pgd_steps"].description or "")
    assert f"lighter than `gls evaluate`'s {DEFAULT_PGD_RESTARTS} restarts" in (fields["pgd_restarts"].description
                                                                                 or "")
