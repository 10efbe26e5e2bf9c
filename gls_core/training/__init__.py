"""Training: configs, estimators (GRAD, PGD, PGPE, RGS), schedules, checkpoints and the local trainer."""

from .checkpoint import load_model, read_metrics, save_model
from .config import ConfigError, TrainConfig, dump_config, load_config, parse_config
from .estimators import Estimator, Evaluated, PGPEEstimator, Proposal, make_estimator
from .objective import Objective
from .schedules import Schedule, StepHyper
from .stages import Stage, build_stages
from .trainer import Trainer, TrainResult, run_step

__all__ = [
    "ConfigError", "Estimator", "Evaluated", "Objective", "PGPEEstimator", "Proposal", "Schedule", "Stage",
    "StepHyper", "TrainConfig", "TrainResult", "Trainer", "build_stages", "dump_config", "load_config",
    "load_model", "make_estimator", "parse_config", "read_metrics", "run_step", "save_model",
]
