"""Validation of a submitted training config: the local schema plus what only holds in the services.

The schema is the one ``gls train`` reads (``gls_core.training.config.TrainConfig``); errors keep
its wording and dotted field paths. On top of it, a job runs on other machines and on behalf of a
tenant, so local paths are refused (data and models travel through ``/v1/datasets`` and
``/v1/models``) and every referenced dataset or model must belong to the caller and fit the network.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from gls_core.catalog import COMPLETE
from gls_core.nets.zoo import DATASETS, network
from gls_core.relaxation_schema import config_sections
from gls_core.training.config import TrainConfig, unknown_key

from ..bound_worker.decoding import MAX_MEMBERS
from ..codec import MAX_PGD_RESTARTS
from ..settings import Settings
from ..store import NotFound, Store
from .errors import InvalidRequest

LOCAL_PATHS = {
    "data.path": "local paths do not reach the services: upload the file (POST /v1/datasets) and set data.dataset_id",
    "data.test_path": "local paths do not reach the services: upload the file (POST /v1/datasets) and set "
                      "data.test_dataset_id",
    "data.data_dir": "the services read built-in datasets from their own data directory (GLS_DATA_DIR)",
    "model.checkpoint": "local paths do not reach the services: upload the model (POST /v1/models) and set "
                        "model.checkpoint_id",
}
_FILE_NEEDS_PATH = "dataset 'file' needs data.path"


def _non_finite(body: Any) -> list[tuple[str, str]]:
    """JSON allows NaN/Infinity literals through Python's parser; no config field means them (iterative: any depth)."""
    errors, pending = [], [("", body)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            errors.append((path or "body", f"must be a finite number, got {value}"))
        elif isinstance(value, dict):
            pending += [(f"{path}.{key}".lstrip("."), item) for key, item in value.items()]
        elif isinstance(value, list):
            pending += [(f"{path}.{index}".lstrip("."), item) for index, item in enumerate(value)]
    return sorted(errors)


def _section(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    return value if isinstance(value, dict) else {}


def _service_only(body: dict[str, Any]) -> list[tuple[str, str]]:
    errors = []
    for field, reason in LOCAL_PATHS.items():
        section, key = field.split(".")
        if _section(body, section).get(key) is not None:
            errors.append((field, reason))
    data = _section(body, "data")
    if data.get("dataset") == "file" and not data.get("dataset_id"):
        errors.append(("data.dataset_id", "dataset 'file' needs the id of a dataset uploaded with POST /v1/datasets"))
    elif data.get("dataset", "mnist") != "file":
        for key in ("dataset_id", "test_dataset_id"):
            if data.get(key) is not None:
                errors.append((f"data.{key}", "only used with data.dataset: file"))
    return errors


def _schema_errors(error: ValidationError, reported: set[str]) -> list[tuple[str, str]]:
    errors = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = unknown_key(item["loc"])
        if field == "data" and message.startswith(_FILE_NEEDS_PATH) and "data.dataset_id" in reported:
            continue  # already said, in the services' terms
        errors.append((field, message))
    return errors


def _check_dataset(store: Store, tenant: str, field: str, dataset_id: str, config: TrainConfig
                   ) -> list[tuple[str, str]]:
    try:
        info = store.dataset_info(dataset_id, tenant)
    except NotFound:
        return [(field, f"no dataset {dataset_id!r} (upload one with POST /v1/datasets)")]
    like = config.zoo_dataset
    shape, classes, _ = DATASETS[like]
    if tuple(info.shape) != tuple(shape):
        return [(field, f"dataset {dataset_id!r} holds inputs of shape {tuple(info.shape)}, but data.input_like "
                        f"{like!r} networks take {tuple(shape)}")]
    if info.num_classes > classes:
        return [(field, f"dataset {dataset_id!r} has {info.num_classes} classes, more than the {classes} outputs "
                        f"of {like!r} networks")]
    if field == "data.dataset_id":  # the training data: a batch must fit it (short batches are dropped)
        examples = min(info.n, config.data.train_subset or info.n)
        if config.data.batch_size > examples:
            source = "data.train_subset" if examples < info.n else f"dataset {dataset_id!r}"
            return [("data.batch_size", f"{config.data.batch_size} is more than the {examples} training examples "
                                        f"({source}): an epoch would train on nothing")]
    return []


def _check_references(store: Store, tenant: str, config: TrainConfig) -> list[tuple[str, str]]:
    errors = []
    if config.data.dataset_id is not None:
        errors += _check_dataset(store, tenant, "data.dataset_id", config.data.dataset_id, config)
    if config.data.test_dataset_id is not None:
        errors += _check_dataset(store, tenant, "data.test_dataset_id", config.data.test_dataset_id, config)
    model_id = config.model.checkpoint_id
    if model_id is not None:
        try:
            info = store.model_info(model_id, tenant)
        except NotFound:
            errors.append(("model.checkpoint_id", f"no model {model_id!r} (upload one with POST /v1/models)"))
        else:
            if (info.arch, info.dataset) != (config.model.arch, config.zoo_dataset):
                errors.append(("model.checkpoint_id", f"model {model_id!r} is {info.arch} for {info.dataset}, but "
                                                      f"the job trains {config.model.arch} for {config.zoo_dataset}"))
    return errors


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _over_limits(config: TrainConfig, settings: Settings) -> list[tuple[str, str]]:
    """A job runs on shared workers: each field that multiplies its cost is capped in the settings, and each
    value the workers would refuse is refused here, before the job is queued."""
    data, evaluation = config.data, config.evaluation
    epochs = config.schedule.epochs + (config.warmup.epochs if config.warmup is not None else 0)
    steps, popsize, examples = settings.job_max_steps, settings.job_max_popsize, settings.job_max_examples
    workers = "the bound workers' limit"
    checks: list[tuple[str, float | None, float, str]] = [
        ("schedule.epochs", epochs, settings.job_max_epochs, "GLS_JOB_MAX_EPOCHS (warm-up included)"),
        ("evaluation.every_epochs", evaluation.every_epochs, settings.job_max_epochs, "GLS_JOB_MAX_EPOCHS"),
        ("schedule.steps_per_epoch", config.schedule.steps_per_epoch, settings.job_max_steps_per_epoch,
         "GLS_JOB_MAX_STEPS_PER_EPOCH"),
        ("pgpe.popsize", config.pgpe.popsize, popsize, "GLS_JOB_MAX_POPSIZE"),
        ("rgs.samples", config.rgs.samples, popsize, "GLS_JOB_MAX_POPSIZE"),
        ("block_members", config.block_members, min(popsize, MAX_MEMBERS), f"GLS_JOB_MAX_POPSIZE; {workers}"),
        ("pgd.steps", config.pgd.steps, steps, "GLS_JOB_MAX_STEPS"),
        ("evaluation.pgd_steps", evaluation.pgd_steps, steps, "GLS_JOB_MAX_STEPS"),
        ("evaluation.alpha_steps", evaluation.alpha_steps, steps, "GLS_JOB_MAX_STEPS"),
        ("pgd.restarts", config.pgd.restarts, MAX_PGD_RESTARTS, workers),
        ("evaluation.pgd_restarts", evaluation.pgd_restarts, MAX_PGD_RESTARTS, workers),
        ("data.train_subset", data.train_subset, examples, "GLS_JOB_MAX_EXAMPLES"),
        ("data.test_subset", data.test_subset, examples, "GLS_JOB_MAX_EXAMPLES"),
        ("data.batch_size", data.batch_size, examples, "GLS_JOB_MAX_EXAMPLES"),
        ("evaluation.batch_size", evaluation.batch_size, examples, "GLS_JOB_MAX_EXAMPLES")]
    checks += [(f"{key}.{item.name}", getattr(config.section(key), item.name), steps, "GLS_JOB_MAX_STEPS")
               for key, record in config_sections().items() for item in record.options if item.work]
    if evaluation.method == COMPLETE:
        checks.append(("evaluation.complete_timeout", evaluation.complete_timeout, settings.verify_max_timeout_s,
                       f"GLS_VERIFY_MAX_TIMEOUT_S, {workers}"))
    errors = [(field, f"{_number(value)} is more than this gateway allows ({_number(limit)}, {setting})")
              for field, value, limit, setting in checks if value is not None and value > limit]
    params = network(config.model.arch, config.zoo_dataset).num_params
    if params > settings.job_max_params:
        errors.append(("model.arch", f"{config.model.arch} for {config.zoo_dataset} has {params:,} parameters, more "
                                     f"than this gateway allows ({settings.job_max_params:,}, GLS_JOB_MAX_PARAMS)"))
    if config.device == "cuda":
        errors.append(("device", "the services place work by each process's GLS_DEVICE; leave device at auto"))
    return errors


def validate_job(store: Store, tenant: str, body: Any, settings: Settings) -> TrainConfig:
    """The config of a job ``tenant`` may run, or :class:`InvalidRequest` naming every bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest.one("body", f"expected a JSON object (the training config), got {type(body).__name__}")
    if not body:
        raise InvalidRequest.one("body", "an empty config would start the full default schedule on MNIST; name at "
                                         "least the model, the data and the estimator")
    errors = _non_finite(body)
    if errors:
        raise InvalidRequest(errors)
    errors = _service_only(body)
    try:
        config = TrainConfig.model_validate(body)
    except ValidationError as error:
        raise InvalidRequest(errors + _schema_errors(error, {field for field, _ in errors})) from None
    if errors:
        raise InvalidRequest(errors)
    errors = _over_limits(config, settings) + _check_references(store, tenant, config)
    if errors:
        raise InvalidRequest(errors)
    return config
