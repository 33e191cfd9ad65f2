"""The preprocessing of a user's data, fitted on the training split only and recorded so that new data (at
predict time) goes through the same transform.

- arrays of tabular rows or sequences (`[N, F]`, `[N, C, L]`): `Standardize` per feature (train mean, std);
- arrays of images (`[N, C, H, W]`) and image folders: `Standardize` per channel, after `ImageEncoding` decodes
  and resizes the files (train: size, colour mode, mean, std);
- tables (CSV, Parquet, datasets folders): `TableEncoding`, numbers imputed by the median (with a missing
  indicator where train had gaps) and standardized, categories imputed by the most frequent value and one-hot
  encoded, unseen ones as all zeros (train: medians, means, stds, categories);
- text (one text column, or an array of strings): `TextColumn`, the strings for a member that tokenizes.

Each preprocessing is a pydantic model (`to_dict()` / `preprocessing_from_dict(d)`: plain JSON, checked when
read back), with `apply(features)` for new features of the same form. `TableEncoding` gives the same numbers as
scikit-learn's `SimpleImputer` + `StandardScaler` + `OneHotEncoder(handle_unknown="ignore")` (a test checks).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ._checks import first_problem
from .errors import DataError
from .readers.source import Table
from .tasks import KINDS, Kind
from .texts import Texts

__all__ = [
    "Kind",
    "KINDS",
    "Table",
    "Standardize",
    "TableEncoding",
    "TextColumn",
    "ImageEncoding",
    "Preprocessing",
    "preprocessing_from_dict",
    "infer_kind",
    "MAX_CATEGORIES",
    "PREPROCESSING_FILE",
]

# Beside a model that `auto` or `demo` trained on a file: what `predict --data NEW_FILE` applies to new data.
PREPROCESSING_FILE = "preprocessing.json"


# A categorical column keeps its most frequent categories (one-hot columns); the rest encode as all zeros.
MAX_CATEGORIES = 100
# A 2-D array is a sequence when neighbouring columns correlate this much more than distant ones (signals, not
# a table whose columns could come in any order).
SEQUENCE_MIN_LENGTH = 16
SEQUENCE_NEIGHBOUR_CORRELATION = 0.5


class _Fitted(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _scale_of(values: np.ndarray, axis) -> tuple[np.ndarray, np.ndarray]:
    mean = np.atleast_1d(values.mean(axis=axis))
    std = np.atleast_1d(values.std(axis=axis))
    std[~(std > 0)] = 1.0  # constant features stay zero instead of dividing by zero (as StandardScaler)
    return mean, std


class Standardize(_Fitted):
    """`(x - mean) / std` per feature, or per channel (dimension 1) for images; `shape` is one sample's shape
    as the model sees it (channels first), `flatten` gives `[N, prod(shape)]` instead."""

    kind: Literal["standardize"] = "standardize"
    shape: list[Annotated[int, Field(ge=1)]] = Field(max_length=4)
    per_channel: bool
    mean: list[float] = Field(max_length=2**24)
    std: list[float] = Field(max_length=2**24)
    flatten: bool = True

    @classmethod
    def fit(cls, X: np.ndarray, *, per_channel: bool, flatten: bool = True) -> Standardize:
        """Statistics of the training features `X [N, *shape]`."""
        X = np.asarray(X, dtype=np.float64)
        axis = (0, *range(2, X.ndim)) if per_channel else 0
        mean, std = _scale_of(X, axis)
        return cls(
            shape=list(X.shape[1:]),
            per_channel=per_channel,
            mean=mean.reshape(-1).tolist(),
            std=std.reshape(-1).tolist(),
            flatten=flatten,
        )

    def apply(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float64)
        shape = tuple(self.shape)
        if X.ndim == len(shape) and len(shape) == 3 and shape[0] == 1:
            X = X[:, None]  # grayscale images given as [N, H, W]
        if tuple(X.shape[1:]) != shape and math.prod(X.shape[1:]) == math.prod(shape):
            X = X.reshape(len(X), *shape)  # flat inputs of the right size
        if tuple(X.shape[1:]) != shape:
            raise DataError(f"inputs of shape {list(X.shape[1:])} do not match the training data's {list(shape)}")
        stat_shape = (shape[0], *[1] * (len(shape) - 1)) if self.per_channel else shape
        mean = np.asarray(self.mean).reshape(stat_shape)
        std = np.asarray(self.std).reshape(stat_shape)
        out = torch.as_tensor((X - mean) / std, dtype=torch.float32)
        return out.reshape(len(out), -1) if self.flatten else out


class NumericColumn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    median: float
    mean: float
    std: float
    indicator: tuple[float, float] | None = None  # mean and std of the 0/1 missing indicator, when train had gaps


class CategoricalColumn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    fill: str  # the most frequent training value, for missing entries
    categories: list[str] = Field(max_length=MAX_CATEGORIES)


class TableEncoding(_Fitted):
    """Columns of a table as features: numbers median-imputed (plus a standardized missing indicator where the
    training split had gaps) and standardized; categories imputed with the most frequent value and one-hot
    encoded, unseen ones as all zeros. Columns empty in the training split are dropped (as scikit-learn's
    imputer does)."""

    kind: Literal["table"] = "table"
    numeric: list[NumericColumn] = Field(max_length=100_000)
    categorical: list[CategoricalColumn] = Field(max_length=100_000)

    @classmethod
    def fit(cls, table: Table) -> TableEncoding:
        numeric, categorical = [], []
        for name, values in table.items():
            if values.dtype == object:
                present = [v for v in values if v is not None]
                if not present:
                    continue
                counts = Counter(present)
                # Most frequent first, ties by value, so the same data always gives the same columns.
                ranked = sorted(counts, key=lambda v: (-counts[v], v))
                categorical.append(
                    CategoricalColumn(name=name, fill=ranked[0], categories=sorted(ranked[:MAX_CATEGORIES]))
                )
                continue
            values = values.astype(np.float64)
            missing = np.isnan(values)
            if missing.all():
                continue
            median = float(np.median(values[~missing]))
            filled = np.where(missing, median, values)
            (mean,), (std,) = _scale_of(filled, 0)
            indicator = None
            if missing.any():
                (ind_mean,), (ind_std,) = _scale_of(missing.astype(np.float64), 0)
                indicator = (float(ind_mean), float(ind_std))
            numeric.append(
                NumericColumn(name=name, median=median, mean=float(mean), std=float(std), indicator=indicator)
            )
        if not numeric and not categorical:
            raise DataError("no feature column has a value in the training split")
        return cls(numeric=numeric, categorical=categorical)

    @property
    def feature_names(self) -> tuple[str, ...]:
        names = []
        for column in self.numeric:
            names.append(column.name)
        names += [f"{c.name} (missing)" for c in self.numeric if c.indicator is not None]
        for column in self.categorical:
            names += [f"{column.name}={value}" for value in column.categories]
        return tuple(names)

    def apply(self, table: Table) -> torch.Tensor:
        absent = [c.name for c in [*self.numeric, *self.categorical] if c.name not in table]
        if absent:
            raise DataError(f"the data has no column {absent[0]!r}, which the model was trained with")
        parts, indicators = [], []
        for column in self.numeric:
            values = table[column.name]
            if values.dtype == object:
                raise DataError(f"column {column.name!r} holds text; the model was trained with numbers there")
            missing = np.isnan(values.astype(np.float64))
            parts.append((np.where(missing, column.median, values) - column.mean) / column.std)
            if column.indicator is not None:
                indicators.append((missing - column.indicator[0]) / column.indicator[1])
        parts += indicators
        for column in self.categorical:
            values = np.array([column.fill if v is None else str(v) for v in table[column.name]], dtype=object)
            parts += [(values == category).astype(np.float64) for category in column.categories]
        rows = len(next(iter(table.values()))) if table else 0
        stacked = np.stack(parts, axis=1) if parts else np.zeros((rows, 0))
        return torch.as_tensor(stacked, dtype=torch.float32)


class TextColumn(_Fitted):
    """The strings of one text column (or an array of strings), unchanged: members tokenize them."""

    kind: Literal["text"] = "text"
    column: str | None = None

    def apply(self, features: Table | Texts | np.ndarray) -> Texts:
        if isinstance(features, dict):
            if self.column not in features:
                raise DataError(f"the data has no text column {self.column!r}, which the model was trained with")
            features = features[self.column]
        return Texts("" if value is None else str(value) for value in features)


class ImageEncoding(_Fitted):
    """Image files decoded in `mode` ("L" or "RGB"), resized to `size` (width, height) with bilinear filtering,
    scaled to [0, 1] and standardized per channel."""

    kind: Literal["image"] = "image"
    size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]]
    mode: Literal["L", "RGB"]
    scale: Standardize

    @classmethod
    def fit(cls, train_files: Sequence, *, size: tuple[int, int] | None = None, flatten: bool = True):
        """The size (the most common among the training images unless given), mode (RGB when any training image
        has colour) and channel statistics of the training images; returns the encoding and their pixels."""
        from .readers.images import decode, image_header

        headers = [image_header(path) for path in train_files]
        if size is None:
            counts = Counter(h.size for h in headers)
            size = max(counts, key=lambda s: (counts[s], s))
        mode = "RGB" if any(h.colour for h in headers) else "L"
        pixels = np.stack([decode(path, mode, tuple(size)) for path in train_files])
        scale = Standardize.fit(pixels, per_channel=True, flatten=flatten)
        encoding = cls(size=tuple(size), mode=mode, scale=scale)
        return encoding, encoding.scale.apply(pixels)

    def apply(self, files: Sequence) -> torch.Tensor:
        from .readers.images import decode

        if not len(files):
            return torch.empty(0, *([math.prod(self.scale.shape)] if self.scale.flatten else self.scale.shape))
        return self.scale.apply(np.stack([decode(path, self.mode, tuple(self.size)) for path in files]))


Preprocessing = Annotated[Standardize | TableEncoding | TextColumn | ImageEncoding, Field(discriminator="kind")]
_PREPROCESSING = TypeAdapter(Preprocessing)


def preprocessing_from_dict(document: object, *, source: str = "the preprocessing") -> Preprocessing:
    """A preprocessing read back from `to_dict()`'s JSON, checked field by field."""
    try:
        return _PREPROCESSING.validate_python(document)
    except ValidationError as err:
        where, message = first_problem(err)
        raise DataError(f"{source}: field {where}: {message}") from None


def infer_kind(X: np.ndarray) -> Kind:
    """What numeric arrays `X [N, ...]` hold, by shape: `[N, C, H, W]` and `[N, H, W]` (more than 4 rows) are
    images, `[N, C, L]` (at most 4 channels) sequences, and `[N, F]` a sequence when its neighbouring columns
    correlate far more than distant ones (a signal sampled in order), else a table."""
    if X.dtype.kind in "US":
        return "text"
    if X.ndim >= 4:
        return "image"
    if X.ndim == 3:
        return "sequence" if X.shape[1] <= 4 else "image"
    if X.ndim == 2 and X.shape[1] >= SEQUENCE_MIN_LENGTH and len(X) >= 3:
        near, far = _column_correlations(X)
        if near >= SEQUENCE_NEIGHBOUR_CORRELATION and near >= 2 * far:
            return "sequence"
    return "tabular"


def _column_correlations(X: np.ndarray) -> tuple[float, float]:
    """The mean absolute correlation of neighbouring columns and of columns half the width apart."""
    X = np.asarray(X[:5000], dtype=np.float64)
    X = X - X.mean(0)
    norms = np.sqrt((X**2).sum(0))
    norms[norms == 0] = np.inf  # constant columns correlate with nothing

    def mean_abs(lag: int) -> float:
        return float(np.mean(np.abs((X[:, :-lag] * X[:, lag:]).sum(0) / (norms[:-lag] * norms[lag:]))))

    return mean_abs(1), mean_abs(X.shape[1] // 2)
