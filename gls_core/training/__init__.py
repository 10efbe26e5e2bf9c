"""Training: configs, estimators (GRAD, PGD, PGPE, RGS), schedules, checkpoints and the local trainer.

Its names are imported when first used (:mod:`gls_core.lazy`), so that reading and validating a
config (:mod:`gls_core.training.config`) does not import torch.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names are; at run time each is imported when first used
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
__getattr__, __dir__ = lazy_exports(__name__, __file__)
