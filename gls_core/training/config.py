"""The one training configuration: YAML on disk, JSON over REST, validated by pydantic.

Every hyper-parameter the paper lists (App. E) is a field, with the paper's value as default where
the paper gives one. Unknown keys are errors, so a typo never silently falls back to a default.
Fields are also checked against each other (an eps ramp longer than the schedule, a learning-rate
milestone after the last epoch), because such a config trains without complaint and certifies
something other than what its author meant. ``docs/config.md`` is generated from these fields.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ErrorType

from .. import relaxations
from ..catalog import (  # plain data: validating a config needs no torch (the CLI reports errors at once)
    ARCHITECTURES,
    DATASETS,
    DEFAULT_COMPLETE_TIMEOUT,
    DEFAULT_PGD_RESTARTS,
    DEFAULT_PGD_STEPS,
    TRAIN_SIZES,
    certify_methods,
)
from ..relaxation_schema import config_sections, section_model
from ..relaxations import MAX_RATE as MAX_RATE

Estimator = Literal["grad", "pgd", "pgpe", "rgs"]
DATASET_CHOICES = (*DATASETS, "file")

# The checks across fields, as docs/config.md states them (each error names the field to change).
CROSS_FIELD_CHECKS = (
    "`schedule.eps_zero_epochs` < `schedule.epochs` and `schedule.eps_zero_epochs + schedule.eps_ramp_epochs` "
    "<= `schedule.epochs`: eps reaches its target within the stage (the same for `warmup`).",
    "`schedule.lr_milestones`: increasing, each within 1..`schedule.epochs` - 1 (a milestone is an epoch "
    "after which lr decays).",
    "`data.batch_size` <= the training examples (`data.train_subset`, or the built-in set's size): short "
    "batches are dropped, so a larger batch leaves an epoch with nothing to train on.",
    "`data.dataset: file` needs `data.path` (or `data.dataset_id`) and `data.input_like`.",
    "`estimator: pgd` needs `relaxation: none`; `grad` and `rgs` need a relaxation with weight gradients "
    f"({', '.join(sorted(relaxations.differentiable()))}) or none.",
)


MAX_SEED = 2**63 - 1
"""Seeds are int64 wherever they go (torch generators, the wire)."""
MAX_ID = 200
"""Length of a stored dataset's or model's id."""


class Strict(BaseModel):
    """Base for every config section: unknown keys are refused.

    Values are read as YAML gives them, leniently: PyYAML reads ``1e-3`` as a string, so a number written
    as a string is converted (``"0.1"`` is 0.1). The REST edge holds JSON clients to the schema's types
    (``services.gateway.jobs``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _training_examples(dataset: str | None, subset: int | None) -> int | None:
    """Training examples an epoch draws from, when the config alone tells (a file's size it does not)."""
    known = TRAIN_SIZES.get(dataset or "")
    if known is None:
        return subset
    return known if subset is None else min(known, subset)


def _zero_epochs_fit(section: str, zero: int, epochs: int | None) -> int:
    if epochs is not None and zero >= epochs:
        raise ValueError(f"all {epochs} epochs of the stage ({section}.epochs) would train at eps = 0: set "
                         f"{section}.eps_zero_epochs below {epochs}")
    return zero


def _ramp_fits(section: str, ramp: int, info: ValidationInfo) -> int:
    epochs, zero = info.data.get("epochs"), info.data.get("eps_zero_epochs")
    if epochs is None or zero is None or zero + ramp <= epochs:
        return ramp
    raise ValueError(f"eps reaches its target only after eps_zero_epochs + eps_ramp_epochs = {zero} + {ramp} = "
                     f"{zero + ramp} epochs, but {section}.epochs is {epochs}: set {section}.eps_ramp_epochs to at "
                     f"most {epochs - zero} (0: the full eps from epoch {zero}), or raise {section}.epochs")


class DataConfig(Strict):
    dataset: str = Field("mnist", description="built-in dataset, or `file` for your own data (`data.path`, or "
                         "`data.dataset_id` in the services)", json_schema_extra={"enum": list(DATASET_CHOICES)})
    path: Path | None = Field(None, description="dataset `file`: your training data, an `.npz` (as `numpy.savez` "
                              "writes) or `.safetensors` holding `x` (N x C x H x W, uint8 0..255 or float in "
                              "[0, 1]) and `y` (integer labels 0..classes-1); relative to the working directory, "
                              "not to `data.data_dir`")
    test_path: Path | None = Field(None, description="dataset `file`: held-out data in the same format, for the "
                                   "evaluation during training (default: `data.path` itself, the training data)")
    dataset_id: str | None = Field(None, max_length=MAX_ID, description="dataset `file` in the services: the id "
                                   "of an uploaded dataset (`gls datasets upload`) instead of `data.path`")
    test_dataset_id: str | None = Field(None, max_length=MAX_ID, description="held-out uploaded dataset (default: "
                                        "`data.dataset_id`)")
    input_like: str | None = Field(None, description="dataset `file`: the built-in dataset whose input shape "
                                   "(C x H x W), number of classes and normalisation your data share; it sets the "
                                   "network's input layer and outputs, e.g. `mnist` for 1 x 28 x 28 grey images "
                                   "of 10 classes", json_schema_extra={"enum": [*DATASETS, None]})
    data_dir: Path | None = Field(None, description="where built-in datasets live (default: `$GLS_DATA_DIR`, "
                                  "else `~/.cache/gls/data`)")
    train_subset: int | None = Field(None, gt=0, description="train on the first N training examples "
                                     "(default: all)")
    test_subset: int | None = Field(1000, gt=0, description="evaluate during training on the first N test "
                                    "examples (null: all)")
    batch_size: int = Field(512, gt=0, validate_default=True, description="training minibatch size; an epoch "
                            "drops its last, short batch")
    augment: bool = Field(True, description="the dataset's standard training augmentation (random crop after "
                          "padding, and flip, for the colour sets; none for the grey ones and files)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASET_CHOICES:
            raise ValueError(f"unknown dataset {value!r}; expected one of {list(DATASET_CHOICES)}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _full_batches(cls, value: int, info: ValidationInfo) -> int:
        subset = info.data.get("train_subset")
        examples = _training_examples(info.data.get("dataset"), subset)
        if examples is not None and value > examples:
            source = "data.train_subset" if subset == examples else f"the {info.data.get('dataset')} training split"
            raise ValueError(f"{value} is more than the {examples} training examples ({source}): short batches are "
                             f"dropped, so an epoch would train on nothing; set data.batch_size to at most {examples}")
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
    arch: str = Field("cnn3-tiny", max_length=128, description="network: a CNN of the paper (Table 7) or CNN7, or "
                      "`fc-WxW...` (fully connected, hidden widths separated by x, e.g. `fc-64x64`)",
                      json_schema_extra={"examples": [*ARCHITECTURES, "fc-64x64"]})
    init: Literal["ibp", "kaiming"] = Field("ibp", description="initialisation: IBP (Shi et al. 2021) or Kaiming "
                                            "uniform")
    checkpoint: Path | None = Field(None, description="start from this model.safetensors (or run directory)")
    checkpoint_id: str | None = Field(None, max_length=MAX_ID, description="start from a model stored in the "
                                      "services (its id)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if value in ARCHITECTURES:
            return value
        if value.startswith("fc-") and all(part.isdigit() and int(part) > 0 for part in value[3:].split("x")):
            return value
        raise ValueError(f"unknown architecture {value!r}; expected one of {sorted(ARCHITECTURES)} or 'fc-WxW' "
                         "(widths of at least 1)")


class ScheduleConfig(Strict):
    epochs: int = Field(70, gt=0, description="epochs of the main stage (after any warm-up)")
    lr: float = Field(5e-5, gt=0, le=MAX_RATE, description="starting learning rate (Adam; PGPE centre learning "
                      "rate)")
    lr_milestones: list[int] = Field(default_factory=lambda: [50, 60], validate_default=True,
                                     description="epochs after which lr is multiplied by `lr_decay`: increasing, "
                                     "each within 1..`epochs` - 1")
    lr_decay: float = Field(0.2, gt=0, le=1, description="factor applied to lr at each milestone")
    eps_zero_epochs: int = Field(0, ge=0, validate_default=True, description="first epochs trained at eps = 0")
    eps_ramp_epochs: int = Field(20, ge=0, validate_default=True, description="epochs over which eps then grows "
                                 "to its target; `eps_zero_epochs + eps_ramp_epochs` at most `epochs`")
    eps_ramp: Literal["smooth", "linear"] = Field("smooth", description="ramp shape; smooth: Shi et al. (2021), "
                                                  "polynomial growth, then linear")
    grad_clip: float | None = Field(10.0, gt=0, le=1e12, description="gradient norm clipping (GRAD, PGD, RGS; "
                                    "null: none)")
    steps_per_epoch: int | None = Field(None, gt=0, description="cap on steps per epoch (short schedules; "
                                        "default: every full batch)")

    @field_validator("lr_milestones")
    @classmethod
    def _milestones_in_schedule(cls, value: list[int], info: ValidationInfo) -> list[int]:
        if any(m <= 0 for m in value) or any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"lr_milestones must be positive and increasing, got {value}")
        epochs = info.data.get("epochs")
        if epochs is None or all(m < epochs for m in value):
            return value
        if epochs == 1:
            raise ValueError(f"{value} cannot apply: with schedule.epochs 1 no epoch is left for lr to decay in; "
                             "set schedule.lr_milestones to [] (or raise schedule.epochs)")
        raise ValueError(f"{value} must lie within 1..{epochs - 1} (schedule.epochs is {epochs}; lr decays after each "
                         f"milestone epoch): set schedule.lr_milestones to epochs below {epochs}, [] for a constant "
                         "lr, or raise schedule.epochs")

    @field_validator("eps_zero_epochs")
    @classmethod
    def _zero_in_schedule(cls, value: int, info: ValidationInfo) -> int:
        return _zero_epochs_fit("schedule", value, info.data.get("epochs"))

    @field_validator("eps_ramp_epochs")
    @classmethod
    def _ramp_in_schedule(cls, value: int, info: ValidationInfo) -> int:
        return _ramp_fits("schedule", value, info)


class PGPEConfig(Strict):
    popsize: int = Field(256, ge=2, description="population size n_ps (even: symmetric pairs)")
    sigma_init: float = Field(1e-3, gt=0, le=MAX_RATE, description="initial standard deviation of the weight "
                              "perturbations")
    sigma_lr: float = Field(0.1, ge=0, le=MAX_RATE, description="learning rate of sigma (0 keeps it fixed)")
    sigma_max_change: float | None = Field(0.2, gt=0, le=MAX_RATE, description="largest relative change of sigma "
                                           "per step (null: no limit)")
    optimizer: Literal["adam", "clipup", "sgd"] = Field("adam", description="optimiser of the centre")
    ranking: Literal["centered", "linear", "nes", "normalized", "raw"] = Field(
        "centered", description="fitness shaping of the population's losses before the update")

    @field_validator("popsize")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"popsize must be even (symmetric pairs theta +/- eps_i), got {value}")
        return value


class RGSConfig(Strict):
    samples: int = Field(2, ge=1, description="gradient points n_ps")
    sigma: float = Field(1e-3, ge=0, le=MAX_RATE, description="noise standard deviation (0 gives plain GRAD)")
    sigma_decay: float = Field(0.4, gt=0, le=1, description="factor applied at each lr milestone")


class PGDConfig(Strict):
    steps: int = Field(8, gt=0, description="attack steps per restart when training with estimator pgd (and a "
                       "pgd warm-up)")
    step_size: float = Field(0.25, gt=0, le=MAX_RATE, description="step as a fraction of eps")
    restarts: int = Field(1, gt=0, description="random restarts of the training attack")


class WarmupConfig(Strict):
    """A first stage of plain gradient training (the paper warm-starts PGPE from PGD training)."""

    estimator: Literal["pgd", "grad"] = Field("pgd", description="pgd: adversarial training; grad: standard "
                                              "training (the warm-up never uses `relaxation`)")
    epochs: int = Field(1, gt=0, description="epochs of the warm-up stage")
    lr: float = Field(1e-3, gt=0, le=MAX_RATE, description="learning rate (Adam, constant)")
    init: Literal["ibp", "kaiming"] = Field("kaiming", description="initialisation; replaces `model.init` when "
                                            "there is a warm-up")
    eps_zero_epochs: int = Field(0, ge=0, validate_default=True, description="first epochs of standard training")
    eps_ramp_epochs: int = Field(1, ge=0, validate_default=True, description="epochs over which the attack radius "
                                 "grows linearly; `eps_zero_epochs + eps_ramp_epochs` at most `epochs`")

    @field_validator("eps_zero_epochs")
    @classmethod
    def _zero_in_warmup(cls, value: int, info: ValidationInfo) -> int:
        return _zero_epochs_fit("warmup", value, info.data.get("epochs"))

    @field_validator("eps_ramp_epochs")
    @classmethod
    def _ramp_in_warmup(cls, value: int, info: ValidationInfo) -> int:
        return _ramp_fits("warmup", value, info)


class EvalConfig(Strict):
    """The evaluation after each `every_epochs` epochs of training; `gls evaluate` is the full one."""

    method: str = Field("deeppoly", description="relaxation that certifies, or `complete` (branch and bound)",
                        json_schema_extra=lambda schema: schema.update(enum=list(certify_methods())))
    eps: float | None = Field(None, ge=0, le=1, description="radius evaluated at, in [0, 1] like `eps` (default: "
                              "the training eps)")
    every_epochs: int = Field(1, gt=0, description="evaluate after every N epochs (and always at the end)")
    batch_size: int = Field(250, gt=0, description="inputs per evaluation batch (250 splits the default "
                            "`data.test_subset` of 1000 evenly)")
    pgd_steps: int = Field(20, gt=0, description="PGD steps of the adversarial accuracy: per-epoch evaluation "
                           f"during training, lighter than `gls evaluate`'s {DEFAULT_PGD_STEPS} steps")
    pgd_restarts: int = Field(2, gt=0, description="PGD restarts: per-epoch evaluation during training, lighter "
                              f"than `gls evaluate`'s {DEFAULT_PGD_RESTARTS} restarts")
    alpha_steps: int | None = Field(None, ge=0, description="slope steps when certifying with a relaxation that "
                                    "has steps (default: its evaluation setting, as `gls evaluate`)")
    complete_timeout: float = Field(DEFAULT_COMPLETE_TIMEOUT, gt=0, le=3600,
                                    description="method complete: seconds per input for the branch and bound "
                                    "(as `gls evaluate`)")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in certify_methods():
            raise ValueError(f"unknown certification method {value!r}; expected one of {list(certify_methods())}")
        return value


def _reraisable(item: Any) -> Any:
    """An error of ``ValidationError.errors()`` as ``from_exception_data`` takes it (a custom type as an instance)."""
    if item["type"] in get_args(ErrorType):
        return item
    return {**item, "type": PydanticCustomError(item["type"], item["msg"])}


def relaxation_sections() -> dict[str, tuple[type[BaseModel], str]]:
    """Config key -> (model, description) of each relaxation's section of options."""
    return {key: (section_model(record), f"relaxation {record.name} when training")
            for key, record in config_sections().items()}


def _sections_schema(schema: dict[str, Any]) -> None:
    for key, (model, description) in relaxation_sections().items():
        schema["properties"][key] = {**model.model_json_schema(), "description": description}


class TrainConfig(Strict):
    """A training job: what to train, with which estimator and relaxation, on which data.

    Each relaxation that takes options has a section of them under its record's key (alpha-CROWN's is
    ``alpha``), every option at its default unless set: :func:`relaxation_options`.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, json_schema_extra=_sections_schema)

    name: str | None = Field(None, max_length=200, description="job name in logs and job lists (default: the "
                             "config file's name)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="job seed: batches, noise and attacks derive from it "
                      "(0..2^63-1)")
    estimator: Estimator = Field("grad", description="how the weights are updated: grad (gradients of the loss), "
                                 "pgd (adversarial training), pgpe (population of perturbed weights, losses "
                                 "only), rgs (gradients at randomly perturbed weights)")
    relaxation: str | None = Field(None, description="relaxation that bounds the training loss; none (or null): "
                                   "standard training on clean inputs",
                                   json_schema_extra=lambda schema: schema.update(
                                       enum=[*sorted(relaxations.names()), "none", None]))
    eps: float = Field(0.1, ge=0, le=1, description="L_inf radius in pixel space: data lie in [0, 1], so 1 already "
                       "covers every image")
    data: DataConfig = Field(default_factory=DataConfig, description="what to train on")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network and its starting weights")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="epochs, learning rate and eps "
                                     "annealing of the main stage")
    pgpe: PGPEConfig = Field(default_factory=PGPEConfig, description="estimator pgpe")
    rgs: RGSConfig = Field(default_factory=RGSConfig, description="estimator rgs")
    pgd: PGDConfig = Field(default_factory=PGDConfig, description="the attack of estimator pgd (and a pgd warm-up)")
    warmup: WarmupConfig | None = Field(None, description="a first stage of plain gradient training in the same "
                                        "job (null: none)")
    evaluation: EvalConfig = Field(default_factory=EvalConfig, description="evaluation during training")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train (auto: cuda when available)")
    threads: int | None = Field(None, gt=0, le=4096, description="torch intra-op threads (default: torch's)")
    checkpoint_every_steps: int | None = Field(None, gt=0, description="also checkpoint mid-epoch (default: at "
                                               "the end of each epoch only)")
    block_members: int = Field(32, gt=0, description="members bounded in one batched call; work is split at "
                               "these boundaries, so results do not depend on how many workers share a step")

    @field_validator("relaxation")
    @classmethod
    def _known_relaxation(cls, value: str | None) -> str | None:
        if value in (None, "none"):
            return None
        if value not in relaxations.names():
            raise ValueError(f"unknown relaxation {value!r}; expected one of {sorted(relaxations.names())} or none")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _relaxation_sections(cls, data: Any, handler: ModelWrapValidatorHandler[TrainConfig],
                             info: ValidationInfo) -> TrainConfig:
        """The relaxations' sections, each validated by its record's model; any other unknown key is an error.

        ``context={"strict": True}`` validates the sections strictly too (the REST edge's type check)."""
        if not isinstance(data, dict):
            return handler(data)
        strict = bool((info.context or {}).get("strict"))
        data, sections, errors = dict(data), {}, list[Any]()
        for key, record in config_sections().items():
            try:
                sections[key] = section_model(record).model_validate(data.pop(key, {}), strict=strict)
            except ValidationError as error:
                errors += [_reraisable({**item, "loc": (key, *item["loc"])}) for item in error.errors()]
        errors += [{"type": "extra_forbidden", "loc": (key,), "input": data.pop(key)}
                   for key in [key for key in data if key not in cls.model_fields]]
        try:
            config = handler(data)
        except ValidationError as error:
            if not errors:
                raise
            errors = [*map(_reraisable, error.errors()), *errors]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        assert config.__pydantic_extra__ is not None
        config.__pydantic_extra__.update(sections)
        return config

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.estimator == "pgd" and self.relaxation is not None:
            raise ValueError("estimator 'pgd' trains on adversarial examples; set relaxation to none")
        if self.estimator in ("grad", "rgs") and self.relaxation is not None and \
                self.relaxation not in relaxations.differentiable():
            raise ValueError(f"relaxation {self.relaxation!r} has no weight gradients; train it with estimator pgpe")
        return self

    def relaxation_options(self) -> dict[str, Any]:
        """Every option of the training relaxation, from its section (none: {})."""
        if self.relaxation is None:
            return {}
        record = relaxations.lookup(self.relaxation)
        section = (self.__pydantic_extra__ or {}).get(record.config_key)
        return record.check(section.model_dump() if section is not None else {}, record.config_key)

    def section(self, key: str) -> BaseModel:
        """A relaxation's section of options (``alpha``)."""
        section: BaseModel = (self.__pydantic_extra__ or {})[key]
        return section

    @property
    def zoo_dataset(self) -> str:
        """The built-in dataset that fixes the network's input shape, classes and normalisation."""
        return self.data.input_like if self.data.dataset == "file" and self.data.input_like else self.data.dataset


def config_warnings(config: TrainConfig) -> list[str]:
    """Fields that are legal but have no effect as set, one ``field: why`` line each (worth saying, not refusing)."""
    lines = []
    data, cap = config.data, config.schedule.steps_per_epoch
    examples = _training_examples(data.dataset, data.train_subset) if data.dataset in TRAIN_SIZES else None
    if cap is not None and examples is not None and cap > examples // data.batch_size:
        lines.append(f"schedule.steps_per_epoch: {cap} is more than the {examples // data.batch_size} full batches "
                     f"of an epoch ({examples} {data.dataset} training examples / data.batch_size {data.batch_size}), "
                     "so it has no effect")
    return lines


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds (``WarmupConfig | None`` -> WarmupConfig), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((model for arg in get_args(annotation) if (model := _section_model(arg)) is not None), None)


def unknown_key(loc: Sequence[Any]) -> str:
    """The message for an unknown key at ``loc``: ``unknown key``, with the nearest valid field when one is close."""
    section: type[BaseModel] | None = TrainConfig
    sections = {key: model for key, (model, _) in relaxation_sections().items()}
    for depth, part in enumerate(loc[:-1]):
        field = section.model_fields.get(str(part)) if section is not None else None
        section = _section_model(field.annotation) if field is not None else (
            sections.get(str(part)) if depth == 0 else None)
    if section is None or not loc:
        return "unknown key"
    keys = [*section.model_fields, *(sections if section is TrainConfig else ())]
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    return f"unknown key; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?" if close else "unknown key"


def format_errors(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted field path: what a user needs to fix the file."""
    lines = [f"invalid training config {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = unknown_key(item["loc"])
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


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line and column, counted from 1)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(error)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"invalid training config {path}: expected a mapping of keys, got {type(data).__name__}")
    return parse_config(apply_overrides(data or {}, overrides or []), str(path))


def dump_config(config: TrainConfig) -> str:
    """YAML that `load_config` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
