"""Errors raised on purpose. Every one is a `ModelFusionError`; the CLI prints it on one line and exits 2.

Warnings modelfusion emits on purpose are `UserWarning` subclasses defined here too."""

from __future__ import annotations

from ._terminal import escape_controls

__all__ = [
    "ModelFusionError",
    "CheckpointError",
    "IncompatibleModelsError",
    "InvalidInputError",
    "DataError",
    "LeakageError",
    "ConfigError",
    "ArgumentError",
    "UnknownNameError",
    "NotFittedError",
    "MissingExtraError",
    "OutputError",
    "TrainingDivergedError",
    "OverconfidenceWarning",
    "first_line",
]


def first_line(err: Exception, limit: int = 200) -> str:
    """What a library's error says, fit for a one-line message: the first line of its text (at most `limit`
    characters), or its type's name when it says nothing."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


class ModelFusionError(Exception):
    """Base of every error modelfusion raises on purpose: the message says what is wrong and what to do, on
    one line."""

    def __str__(self) -> str:
        # Control characters (a newline in a file name a config gave, an ESC sequence in a member's name) are
        # shown escaped, so that a message stays one line and the terminal obeys nothing in it.
        return escape_controls(super().__str__(), keep="\t")


class CheckpointError(ModelFusionError):
    """A checkpoint is missing, corrupt, of an unknown format, unsafe to load, or does not fit its model."""

    @classmethod
    def unreadable(cls, path, fmt: str, err: Exception) -> CheckpointError:
        """The one error for a file a reader choked on: the file, the format tried, the reader's first line."""
        return cls(
            f"{path}: cannot read it as {fmt} ({first_line(err)}); the file may be corrupt, truncated or of another "
            "format"
        )


class IncompatibleModelsError(ModelFusionError):
    """Members or models that cannot be fused together (class order, output shape, architecture)."""


class InvalidInputError(ModelFusionError, ValueError):
    """Bad data: wrong shapes, NaN/inf values, empty inputs."""


class DataError(InvalidInputError):
    """A data file or folder that cannot be read as a dataset: the message names the file and the row or column."""


class LeakageError(InvalidInputError):
    """Labels of the split a fusion is scored on would reach its fit: fitting on test predictions, or the same
    predictions given as validation and as test."""


class ConfigError(ModelFusionError, ValueError):
    """A bad configuration value or option."""


class ArgumentError(ConfigError, TypeError):
    """A public function called with an argument of the wrong type or out of its range (also a TypeError, as
    Python's own wrong-type errors are)."""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a registry (dataset, method, combiner)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return escape_controls(self.args[0], keep="\t") if self.args else ""


class NotFittedError(ModelFusionError, RuntimeError):
    """A fitted object was used before `fit`."""


class MissingExtraError(ModelFusionError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class OutputError(ModelFusionError):
    """An output that may not or cannot be written: it exists (without overwrite), it is an input, it is
    locked by another run, or the system refuses the write."""


class TrainingDivergedError(ModelFusionError):
    """Training produced a non-finite loss; the message names the epoch and what was kept."""


class OverconfidenceWarning(UserWarning):
    """A member gives the true class of validation samples (almost) zero probability; the message names the
    member, the count and what the combiner does about it."""
