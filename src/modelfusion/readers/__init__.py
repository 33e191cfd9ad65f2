"""Readers of a user's data files: each turns a file or folder into a `Source` (features, raw labels, the splits
the file fixes), which `modelfusion.datasets.load_data` splits and preprocesses.

| source | reader | extra |
|---|---|---|
| `.npz` with `X`, `y` (and `X_val`, `y_val`, `X_test`, `y_test`) | `arrays.read_npz` (numpy, no pickles) | |
| `.csv`, `.tsv` with a header row | `tables.read_csv` (the standard library's csv) | |
| `.parquet` | `tables.read_parquet` | `parquet` (pyarrow) |
| a folder saved by `datasets`' `save_to_disk` | `tables.read_hf_dataset` | `hf` (datasets) |
| class sub-folders of images (torchvision's `ImageFolder`) | `images.read_image_folder` | `images` (Pillow) |

Every reader raises nothing but `DataError` (a `ModelFusionError`) naming the file and the row or column.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .files import checked_folder, regular_file
from .source import Source, num_rows, take

__all__ = ["Source", "read_source", "take", "num_rows", "SUFFIXES"]

SUFFIXES = (".npz", ".csv", ".tsv", ".parquet")


def read_source(path: str | os.PathLike, *, target: str | None = None, labelled: bool = True) -> Source:
    """Read `path` with the reader its suffix (or, for a folder, its contents) calls for.

    Args:
        path: a file or folder listed in this module's table.
        target: the label column of a table (default: a column named target, label, labels, class or y, else
            the last column).
        labelled: whether labels are required (False for new data at predict time: a table without the target
            column is read as features only).
    """
    path = Path(path)
    if "\x00" in str(path):
        raise DataError(f"{str(path)!r} holds a NUL character, which no file name can")
    if path.is_dir():
        checked_folder(path, "data folder")
        from . import images, tables

        if tables.is_hf_dataset(path):
            return tables.read_hf_dataset(path, target=target, labelled=labelled)
        return images.read_image_folder(path, labelled=labelled)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        regular_file(path, "data file")  # a missing file is named as such before its suffix
        raise DataError(
            f"{path}: unknown data format {suffix or '(no suffix)'!r}; supported: {', '.join(SUFFIXES)}, a folder "
            "of class sub-folders of images, or a folder saved by datasets' save_to_disk"
        )
    if suffix == ".npz":
        from .arrays import read_npz

        return read_npz(path, labelled=labelled)
    from . import tables

    if suffix == ".parquet":
        return tables.read_parquet(path, target=target, labelled=labelled)
    return tables.read_csv(path, target=target, labelled=labelled, delimiter="\t" if suffix == ".tsv" else ",")
