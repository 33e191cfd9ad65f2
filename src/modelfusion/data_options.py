"""Which data a command runs on: an embedded dataset by name (`--dataset digits`) or the user's own file or folder
(`--data FILE [--target COLUMN] [--task ...]`). One option set, declared here once, that every command taking data
shares (the CLI's `with_data`, the distillation job's fields), and one loader call, `DataChoice.load(seed=...)`.

Imports nothing heavy: the command line reads these options before torch is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = ["DataChoice", "DATA_HELP", "DEFAULT_DATASET"]

DEFAULT_DATASET = "digits"

DATA_HELP = {
    "dataset": f"embedded dataset: digits, breast_cancer, wine, diabetes or mnist1d (default {DEFAULT_DATASET})",
    "data": "your data instead: an .npz (X, y), .csv/.tsv or .parquet table, a folder of class sub-folders of images, "
    "or a folder saved by datasets' save_to_disk",
    "target": "the label column of a --data table (default: the column named target, label, labels, class or y)",
    "task": "classification or regression for --data (default: from the labels)",
}


@dataclass(frozen=True)
class DataChoice:
    """An embedded dataset by name, or the user's data file; neither means the default embedded dataset.

    Example:
        >>> DataChoice(data="penguins.csv", target="species").load(seed=0).summary()
    """

    dataset: str | None = None
    data: str | os.PathLike | None = None
    target: str | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        if self.dataset is not None and self.data is not None:
            raise ConfigError(f"give --dataset {self.dataset} or --data {self.data}, not both")
        if self.data is None and (self.target is not None or self.task is not None):
            given = "--target" if self.target is not None else "--task"
            raise ConfigError(f"{given} describes a --data file; the embedded datasets fix their labels and task")

    @property
    def inputs(self) -> list[Path]:
        """The user's file, which no output may overwrite."""
        return [Path(self.data)] if self.data is not None else []

    @property
    def label(self) -> str:
        """How messages name the data."""
        return str(self.data) if self.data is not None else self.dataset or DEFAULT_DATASET

    def load(self, *, seed: int = 0) -> Dataset:
        """The `Dataset` (seeded splits): `load_dataset(name)` or `load_data(path, target=..., task=...)`."""
        from ._deprecation import deprecated
        from .datasets import DATASETS, load_data, load_dataset

        if self.data is None:
            return load_dataset(self.dataset or DEFAULT_DATASET, seed=seed)
        if str(self.data) in DATASETS.names() and not os.path.lexists(self.data):  # merge-search's old --data NAME
            deprecated(f"--data {self.data} (an embedded dataset)", f"--dataset {self.data}")
            return load_dataset(str(self.data), seed=seed)
        return load_data(self.data, target=self.target, task=self.task, seed=seed)
