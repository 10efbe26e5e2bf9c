"""The one training configuration: YAML on disk, JSON over REST, validated by pydantic.

Every hyper-parameter the paper lists (App. E) is a field, with the paper's value as default where
the paper gives one. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..bounds.api import DIFFERENTIABLE, METHODS
from ..evaluation import CERTIFY_METHODS
from ..nets.zoo import ARCHITECTURES, DATASETS

Estimator = Literal["grad", "pgd", "pgpe", "rgs"]
DATASET_CHOICES = (*DATASETS, "file")


class Strict(BaseModel):
    """Base for every config section: unknown keys and type coercions from strings are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    dataset: str = Field("mnist", description="built-in dataset name or 'file' for a user .npz/.safetensors")
    path: Path | None = Field(None, description="user dataset file (dataset: file)")
    test_path: Path | None = Field(None, description="held-out user dataset file (dataset: file)")
    dataset_id: str | None = Field(None, description="a dataset uploaded to the services (dataset: file)")
    test_dataset_id: str | None = Field(None, description="held-out uploaded dataset (default: dataset_id)")
    input_like: str | None = Field(None, description="built-in dataset whose input shape user data has (for "
                                   "the architecture), e.g. mnist")
    data_dir: Path | None = Field(None, description="where datasets live; default $GLS_DATA_DIR or ~/.cache/gls/data")
    train_subset: int | None = Field(None, gt=0, description="use the first N training examples")
    test_subset: int | None = Field(1000, gt=0, description="evaluate on the first N test examples")
    batch_size: int = Field(512, gt=0)
    augment: bool = Field(True, description="the dataset's standard augmentation (crop + flip for colour sets)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASET_CHOICES:
            raise ValueError(f"unknown dataset {value!r}; expected one of {list(DATASET_CHOICES)}")
        return value

    @model_validator(mode="after")
    def _file_needs_path(self) -> DataConfig:
        if self.dataset == "file" and self.path is None and self.dataset_id is None:
            raise ValueError("dataset 'file' needs data.path (an .npz or .safetensors with x and y) or data.dataset_id")
        if self.dataset == "file" and self.input_like not in DATASETS:
            raise ValueError(f"dataset 'file' needs data.input_like, one of {sorted(DATASETS)}, naming the "
                             "built-in dataset whose input shape and normalisation the data shares")
        return self


class ModelConfig(Strict):
    arch: str = Field("cnn3-tiny", description="cnn3-tiny, cnn3, cnn5, cnn5-l, cnn7 or fc-WxW")
    init: Literal["ibp", "kaiming"] = Field("ibp", description="IBP initialisation (Shi et al. 2021) or Kaiming")
    checkpoint: Path | None = Field(None, description="start from this model.safetensors (or run directory)")
    checkpoint_id: str | None = Field(None, description="start from a model stored in the services (its id)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if value in ARCHITECTURES:
            return value
        if value.startswith("fc-") and all(part.isdigit() for part in value[3:].split("x")) and value[3:]:
            return value
        raise ValueError(f"unknown architecture {value!r}; expected one of {sorted(ARCHITECTURES)} or 'fc-WxW'")


class ScheduleConfig(Strict):
    epochs: int = Field(70, gt=0)
    lr: float = Field(5e-5, gt=0, description="starting learning rate (Adam; PGPE centre learning rate)")
    lr_milestones: list[int] = Field(default_factory=lambda: [50, 60], description="epochs after which lr decays")
    lr_decay: float = Field(0.2, gt=0, le=1)
    eps_zero_epochs: int = Field(0, ge=0, description="first epochs trained at eps = 0")
    eps_ramp_epochs: int = Field(20, ge=0, description="epochs over which eps grows to its final value")
    eps_ramp: Literal["smooth", "linear"] = Field("smooth", description="smooth: Shi et al. (2021) exp-then-linear")
    grad_clip: float | None = Field(10.0, gt=0, description="gradient norm clipping (GRAD, PGD, RGS)")
    steps_per_epoch: int | None = Field(None, gt=0, description="cap on steps per epoch (short schedules)")

    @field_validator("lr_milestones")
    @classmethod
    def _sorted_milestones(cls, value: list[int]) -> list[int]:
        if any(m <= 0 for m in value) or value != sorted(value):
            raise ValueError(f"lr_milestones must be positive and increasing, got {value}")
        return value


class PGPEConfig(Strict):
    popsize: int = Field(256, ge=2, description="population size n_ps (even: symmetric pairs)")
    sigma_init: float = Field(1e-3, gt=0)
    sigma_lr: float = Field(0.1, ge=0, description="learning rate of sigma (0 keeps it fixed)")
    sigma_max_change: float | None = Field(0.2, gt=0, description="largest relative change of sigma per step")
    optimizer: Literal["adam", "clipup", "sgd"] = "adam"
    ranking: Literal["centered", "linear", "nes", "normalized", "raw"] = "centered"

    @field_validator("popsize")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"popsize must be even (symmetric pairs theta +/- eps_i), got {value}")
        return value


class RGSConfig(Strict):
    samples: int = Field(2, ge=1, description="gradient points n_ps")
    sigma: float = Field(1e-3, ge=0, description="noise standard deviation (0 gives plain GRAD)")
    sigma_decay: float = Field(0.4, gt=0, le=1, description="factor applied at each lr milestone")


class PGDConfig(Strict):
    steps: int = Field(8, gt=0)
    step_size: float = Field(0.25, gt=0, description="step as a fraction of eps")
    restarts: int = Field(1, gt=0)


class AlphaConfig(Strict):
    steps: int = Field(1, ge=0, description="slope optimisation steps (paper: 1 when training)")
    step_size: float = Field(0.5, ge=0)
    init: float = Field(0.5, ge=0, le=1)


class WarmupConfig(Strict):
    """A first stage of plain gradient training (the paper warm-starts PGPE from PGD training)."""

    estimator: Literal["pgd", "grad"] = "pgd"
    epochs: int = Field(1, gt=0)
    lr: float = Field(1e-3, gt=0)
    init: Literal["ibp", "kaiming"] = "kaiming"
    eps_zero_epochs: int = Field(0, ge=0, description="first epochs of standard training")
    eps_ramp_epochs: int = Field(1, ge=0, description="epochs over which the attack radius grows linearly")


class EvalConfig(Strict):
    method: str = Field("deeppoly", description="relaxation used to certify")
    eps: float | None = Field(None, ge=0, le=1, description="default: the training eps")
    every_epochs: int = Field(1, gt=0)
    batch_size: int = Field(250, gt=0)
    pgd_steps: int = Field(20, gt=0)
    pgd_restarts: int = Field(2, gt=0)
    alpha_steps: int = Field(20, ge=0, description="alpha-CROWN steps when certifying (more than training)")
    complete_timeout: float = Field(30.0, gt=0, le=3600,
                                    description="method complete: seconds per input for the branch and bound")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in CERTIFY_METHODS:
            raise ValueError(f"unknown certification method {value!r}; expected one of {list(CERTIFY_METHODS)}")
        return value


class TrainConfig(Strict):
    """A training job: what to train, with which estimator and relaxation, on which data."""

    name: str | None = None
    seed: int = Field(0, ge=0, description="job seed: batches, noise and attacks derive from it")
    estimator: Estimator = "grad"
    relaxation: str | None = Field(None, description="ibp, hbox, crown-ibp, deeppoly, alpha-crown; none: standard")
    eps: float = Field(0.1, ge=0, le=1, description="L_inf radius in [0,1] pixel space (more covers every image)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    pgpe: PGPEConfig = Field(default_factory=PGPEConfig)
    rgs: RGSConfig = Field(default_factory=RGSConfig)
    pgd: PGDConfig = Field(default_factory=PGDConfig)
    alpha: AlphaConfig = Field(default_factory=AlphaConfig)
    warmup: WarmupConfig | None = None
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0, description="torch intra-op threads (default: torch's)")
    checkpoint_every_steps: int | None = Field(None, gt=0, description="also checkpoint mid-epoch")
    block_members: int = Field(32, gt=0, description="members bounded in one batched call; work is split at "
                               "these boundaries, so results do not depend on how many workers share a step")

    @field_validator("relaxation")
    @classmethod
    def _known_relaxation(cls, value: str | None) -> str | None:
        if value in (None, "none"):
            return None
        if value not in METHODS:
            raise ValueError(f"unknown relaxation {value!r}; expected one of {sorted(METHODS)} or none")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.estimator == "pgd" and self.relaxation is not None:
            raise ValueError("estimator 'pgd' trains on adversarial examples; set relaxation to none")
        if self.estimator in ("grad", "rgs") and self.relaxation is not None and self.relaxation not in DIFFERENTIABLE:
            raise ValueError(f"relaxation {self.relaxation!r} has no weight gradients; train it with estimator pgpe")
        return self

    @property
    def zoo_dataset(self) -> str:
        """The built-in dataset that fixes the network's input shape, classes and normalisation."""
        return self.data.input_like if self.data.dataset == "file" and self.data.input_like else self.data.dataset


def format_errors(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted field path: what a user needs to fix the file."""
    lines = [f"invalid training config {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


class ConfigError(ValueError):
    """A config that cannot be used; the message names every offending field."""


def parse_config(data: Any, source: str = "<input>") -> TrainConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid training config {source}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_errors(error, source)) from None


def parse_value(text: str) -> Any:
    """A --set value: YAML scalar syntax, so `0.1`, `true`, `null` and `[50, 60]` mean what they say."""
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` assignments to a raw config mapping (validation happens afterwards)."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, _, value = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set has an empty key in {item!r}")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = parse_value(value)
    return result


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"invalid training config {path}: expected a mapping of keys, got {type(data).__name__}")
    return parse_config(apply_overrides(data or {}, overrides or []), str(path))


def dump_config(config: TrainConfig) -> str:
    """YAML that `load_config` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
