"""modelfusion: fuse several trained models into one better predictor or one better model."""

from .errors import (
    ArgumentError,
    CheckpointError,
    ConfigError,
    DataError,
    IncompatibleModelsError,
    InvalidInputError,
    LeakageError,
    MissingExtraError,
    ModelFusionError,
    NotFittedError,
    OutputError,
    OverconfidenceWarning,
    TrainingDivergedError,
    UnknownNameError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ModelFusionError",
    "CheckpointError",
    "ArgumentError",
    "ConfigError",
    "DataError",
    "IncompatibleModelsError",
    "InvalidInputError",
    "LeakageError",
    "MissingExtraError",
    "NotFittedError",
    "OutputError",
    "OverconfidenceWarning",
    "TrainingDivergedError",
    "UnknownNameError",
]
