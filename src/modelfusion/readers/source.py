"""`Source`: what a reader found in a file, before `load_data` splits and preprocesses it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..tasks import Kind
from ..texts import Texts

__all__ = ["Source", "Table", "take", "num_rows"]

Table = dict[str, np.ndarray]  # column name -> float64 values (NaN: missing) or objects (str, None: missing)


@dataclass
class Source:
    """What a reader found, before splitting and preprocessing.

    `features` are numeric arrays `[N, ...]`, a `Table` (column -> values), `Texts`, or image paths (an object
    array); `labels` the raw targets (numbers with NaN for gaps, or objects with None), None when the file has
    none (new data at predict time); `assigned` the split of each row ("train", "val", "test") where the file
    fixes it; `row` names row `i` in messages ("line 7", "the file a/b.png").
    """

    path: str
    features: np.ndarray | Table | Texts
    labels: np.ndarray | None
    target: str  # where the labels came from, for messages ("column 'y'", "array y")
    assigned: np.ndarray | None = None
    kind: Kind | None = None
    class_names: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] = ()
    row: Callable[[int], str] = field(default=lambda i: f"row {i}")


def num_rows(features) -> int:
    return len(next(iter(features.values()))) if isinstance(features, dict) else len(features)


def take(features, rows: np.ndarray):
    """The rows `rows` of features of any form."""
    if isinstance(features, dict):
        return {name: values[rows] for name, values in features.items()}
    return features[rows]
