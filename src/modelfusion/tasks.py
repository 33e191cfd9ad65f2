"""The one `Task` type: what a model predicts, classes or values; and `Kind`: what the data is."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Task", "TASKS", "Kind", "KINDS"]

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = get_args(Task)

# What the inputs are, for choosing models by the data's shape: rows of features, images, sequences, or texts.
Kind = Literal["tabular", "image", "sequence", "text"]
KINDS: tuple[Kind, ...] = get_args(Kind)
