"""The one `Task` type: what a model predicts, classes or values."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Task", "TASKS"]

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = get_args(Task)
