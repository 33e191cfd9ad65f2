"""`.npz` files: `X` and `y`, optionally `X_val`/`y_val` and `X_test`/`y_test` that fix the splits.

Names are matched without regard to case, and `X_train`/`y_train` may stand for `X`/`y` (Keras' `mnist.npz`
reads as it is). Every array's header is checked (dtype, declared size against the archive) before numpy
allocates anything; object arrays (pickles) are refused.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError, first_line
from ..texts import Texts
from .files import regular_file
from .source import Source

__all__ = ["read_npz", "arrays_source"]

MAX_ARRAYS = 64
MAX_EXPANSION = 100  # an array may unpack to at most this many times its compressed size (plus the slack)
EXPANSION_SLACK_BYTES = 64 * 2**20
NUMERIC_KINDS = "biuf"
SPLIT_KEYS = {
    "train": (("x", "x_train"), ("y", "y_train")),
    "val": (("x_val", "x_valid", "x_validation"), ("y_val", "y_valid", "y_validation")),
    "test": (("x_test",), ("y_test",)),
}


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of each array in the archive, read from the `.npy` headers alone."""
    try:
        archive = zipfile.ZipFile(path)
    except Exception as err:  # BadZipFile, and odd end records that raise others
        raise DataError(f"{path}: not an NPZ file ({first_line(err)})") from None
    headers = {}
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ARRAYS:
            raise DataError(f"{path}: {len(entries)} arrays (at most {MAX_ARRAYS})")
        declared = sum(entry.file_size for entry in entries)
        if declared > MAX_EXPANSION * path.stat().st_size + EXPANSION_SLACK_BYTES:
            raise DataError(f"{path}: its arrays declare {declared:,} bytes unpacked: refused as a likely zip bomb")
        for entry in entries:
            name = entry.filename.removesuffix(".npy")
            try:
                with archive.open(entry) as file:
                    version = np.lib.format.read_magic(file)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
                    read = read or np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(file, max_header_size=10_000)
            except Exception as err:
                raise DataError(f"{path}: array {name!r} is not a valid .npy array ({first_line(err)})") from None
            if dtype.hasobject or dtype.kind not in NUMERIC_KINDS + "U":
                raise DataError(
                    f"{path}: array {name!r} has dtype {dtype}; save numbers (or strings for labels and texts), "
                    "not Python objects"
                )
            if math.prod(shape) * dtype.itemsize > entry.file_size:
                raise DataError(f"{path}: array {name!r} declares shape {list(shape)}, more than the archive holds")
            headers[name] = (shape, dtype)
    return headers


def _lookup(headers: dict, names: tuple[str, ...]) -> str | None:
    found = [key for key in headers if key.lower() in names]
    return found[0] if found else None


def read_npz(path: str | Path, *, labelled: bool = True) -> Source:
    path = regular_file(path, "NPZ file")
    headers = _headers(path)
    keys = {split: (_lookup(headers, xs), _lookup(headers, ys)) for split, (xs, ys) in SPLIT_KEYS.items()}
    if keys["train"][0] is None:
        found = ", ".join(sorted(headers)) or "none"
        raise DataError(f"{path}: no array X (arrays found: {found}); save X and y with numpy.savez")
    if labelled and keys["train"][1] is None:
        raise DataError(f"{path}: no array y beside X; save the labels as y")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {split: tuple(archive[k] if k else None for k in pair) for split, pair in keys.items()}
    except Exception as err:  # zlib, CRC and truncation errors of the members
        raise DataError(f"{path}: cannot read its arrays ({first_line(err)})") from None
    return arrays_source(arrays, str(path), names=keys, labelled=labelled)


def arrays_source(
    arrays: dict[str, tuple[np.ndarray | None, np.ndarray | None]],
    where: str,
    *,
    names: dict[str, tuple[str | None, str | None]] | None = None,
    labelled: bool = True,
) -> Source:
    """The Source of features and labels given per split (`{"train": (X, y), "val": (X_val, y_val), ...}`,
    None where absent); `names` are the arrays' names for messages."""
    names = names or {split: (f"X_{split}" if split != "train" else "X", f"y_{split}" if split != "train" else "y")
                      for split in arrays}  # fmt: skip
    features, labels, assigned, parts = [], [], [], []
    for split, (X, y) in arrays.items():
        name_x, name_y = names[split]
        if X is None:
            if y is not None:
                raise DataError(f"{where}: array {name_y!r} has no features beside it")
            continue
        _check_features(X, where, name_x, features[0] if features else None)
        if labelled:
            if y is None:
                raise DataError(f"{where}: array {name_x!r} has no labels beside it")
            if y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.ndim != 1 or len(y) != len(X):
                raise DataError(
                    f"{where}: array {name_y!r} has shape {list(y.shape)}; expected one label per row of "
                    f"{name_x!r} ({len(X)})"
                )
            if y.dtype.kind not in NUMERIC_KINDS + "UO":
                raise DataError(f"{where}: array {name_y!r} has dtype {y.dtype}; labels are numbers or strings")
            labels.append(y.astype(object) if y.dtype.kind in "UO" else y.astype(np.float64))
        features.append(X)
        assigned += [split] * len(X)
        parts.append(split)
    if not features:
        raise DataError(f"{where}: no features")

    if features[0].dtype.kind == "U":
        joined = Texts(str(x) for part in features for x in part)
    else:
        joined = np.concatenate(features)
    starts = np.cumsum([0, *[len(X) for X in features]])

    def row(i: int) -> str:
        part = int(np.searchsorted(starts, i, side="right")) - 1
        return f"row {i - starts[part]} of {names[parts[part]][1] or names[parts[part]][0]}"

    return Source(
        path=where,
        features=joined,
        labels=(np.concatenate(labels) if len({a.dtype for a in labels}) == 1 else _as_objects(labels))
        if labelled
        else None,
        target=f"array {names['train'][1]}",
        assigned=np.array(assigned, dtype=object) if len(features) > 1 else None,
        row=row,
    )


def _as_objects(labels: list[np.ndarray]) -> np.ndarray:
    """Labels of splits saved with different dtypes (strings in one, numbers in another) as one object array;
    the task's label check then names the mix."""
    return np.concatenate([part.astype(object) for part in labels])


def _check_features(X: np.ndarray, path: Path | str, name: str, first: np.ndarray | None) -> None:
    if X.ndim == 0 or len(X) == 0:
        raise DataError(f"{path}: array {name!r} has no rows (shape {list(X.shape)})")
    if X.dtype.kind == "U":
        if X.ndim != 1:
            raise DataError(f"{path}: array {name!r} holds strings in shape {list(X.shape)}; texts are one per row")
    elif X.ndim == 1:
        raise DataError(f"{path}: array {name!r} is 1-D; features are [rows, features] (reshape(-1, 1) for one)")
    if first is not None and (X.shape[1:] != first.shape[1:] or (X.dtype.kind == "U") != (first.dtype.kind == "U")):
        raise DataError(
            f"{path}: array {name!r} has rows of shape {list(X.shape[1:])} ({X.dtype}) but the training rows "
            f"have {list(first.shape[1:])} ({first.dtype})"
        )
    if X.dtype.kind == "f":
        bad = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
        if bad.any():
            raise DataError(
                f"{path}: array {name!r} row {int(np.argmax(bad))} holds NaN or inf; impute or drop such rows"
            )
