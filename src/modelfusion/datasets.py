"""Data: the embedded datasets, the user's own files (`load_data`) and arrays (`Dataset.from_arrays`), all as one
`Dataset` with seeded, stratified train/val/test splits.

Nothing here touches the network: scikit-learn ships `digits`, `breast_cancer`, `wine` and `diabetes` inside
the package, and mnist1d is generated from its templates with `make_dataset` (never its download function).
Files are read by `modelfusion.readers`; whatever is fitted to them (standardization, imputation, encodings,
image size) is fitted on the training split only and kept as `Dataset.preprocessing` for new data.
"""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

from ._checks import check_count, check_number, check_seed, checked
from .errors import ConfigError, DataError, first_line
from .preprocessing import (
    PREPROCESSING_FILE,
    ImageEncoding,
    Preprocessing,
    Standardize,
    TableEncoding,
    TextColumn,
    infer_kind,
)
from .registry import Registry
from .tasks import KINDS, TASKS, Kind, Task
from .texts import Texts

__all__ = [
    "Split",
    "Dataset",
    "DATASETS",
    "load_dataset",
    "load_data",
    "prepare_inputs",
    "Preparation",
    "read_preparation",
    "find_preparation",
    "prediction_inputs",
    "Texts",
]

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: features `X` float32 `[N, *input_shape]` (or `Texts` for text data) and targets `y` (int64
    labels or float32 values)."""

    name: str
    X: torch.Tensor | Texts
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def per_class(self, count: int, *, seed: int = 0) -> Split:
        """At most `count` samples of each class, drawn with `seed`, in their original order (few-shot
        training and validation sets)."""
        check_count(count, "the samples per class")
        generator = torch.Generator().manual_seed(check_seed(seed))
        keep = []
        for label in torch.unique(self.y):
            index = torch.nonzero(self.y == label)[:, 0]
            keep.append(index[torch.randperm(len(index), generator=generator)[:count]])
        rows = torch.cat(keep).sort().values
        return Split(self.name, self.X[rows], self.y[rows])


@dataclass(frozen=True)
class Dataset:
    """A dataset with train/val/test splits and what a model needs to know about it.

    `input_shape` is the shape of one sample as stored in the splits; `image_shape` is the channels-first
    shape a CNN should see (`(1, 8, 8)` for digits, `(1, 40)` for mnist1d), or None for tabular data.
    `kind` is what the data is (tabular, image, sequence or text), for choosing models by shape;
    `preprocessing` the transform fitted on the training split (None for the embedded datasets), which
    `prepare_inputs` applies to new data; `target` the label column a table was read with (None: the
    conventional names).
    """

    name: str
    task: Task
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    image_shape: tuple[int, ...] | None
    seed: int
    source: str
    kind: Kind = "tabular"
    preprocessing: Preprocessing | None = None
    target: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.X.shape[1:])

    @classmethod
    def from_arrays(
        cls,
        X,
        y,
        *,
        X_val=None,
        y_val=None,
        X_test=None,
        y_test=None,
        task: Task | None = None,
        kind: Kind | None = None,
        val: float = 0.2,
        test: float = 0.2,
        seed: int = 0,
        as_images: bool = False,
        name: str = "arrays",
        class_names: Sequence[str] | None = None,
        feature_names: Sequence[str] | None = None,
    ) -> Dataset:
        """A dataset from arrays (numpy, torch, or lists of strings for texts), split and standardized as
        `load_data` does an `.npz` file: `X_val`/`X_test` (with their labels) fix those splits, else they are
        drawn from `X` (stratified, seeded). `class_names[i]` names label `i` when labels are 0..C-1.

        Example:
            >>> data = Dataset.from_arrays(X, y, seed=0)  # X [1000, 20] numbers, y [1000] labels
            >>> data.train.X.shape, data.kind
            (torch.Size([600, 20]), 'tabular')
        """
        from .readers.arrays import arrays_source

        def array(value):
            if value is None:
                return None
            if isinstance(value, torch.Tensor):
                return value.detach().cpu().numpy()
            return np.asarray(value)

        parts = {"train": (X, y), "val": (X_val, y_val), "test": (X_test, y_test)}
        source = arrays_source({k: (array(a), array(b)) for k, (a, b) in parts.items()}, name)
        if class_names is not None:
            source.class_names = tuple(str(c) for c in class_names)
        if feature_names is not None:
            source.feature_names = tuple(str(f) for f in feature_names)
        return _assemble(source, name=name, task=task, kind=kind, val=val, test=test, seed=seed, as_images=as_images)

    def prepare(self, path: str | os.PathLike) -> tuple[torch.Tensor | Texts, torch.Tensor | None]:
        """New data from `path` through this dataset's preprocessing: `(X, y)`, `y` None when the file has no
        labels (see `prepare_inputs`)."""
        if self.preprocessing is None:
            raise ConfigError(f"dataset {self.name!r} was not read from a file; it has no preprocessing to apply")
        return prepare_inputs(path, self.preprocessing, class_names=self.class_names, task=self.task)

    def preparation(self) -> Preparation:
        """What new data needs to be prepared as this dataset was: its preprocessing, task and class names
        (`save` it beside a model; `predict --data` applies it)."""
        if self.preprocessing is None:
            raise ConfigError(f"dataset {self.name!r} was not read from a file; it has no preprocessing to apply")
        return Preparation(
            preprocessing=self.preprocessing,
            task=self.task,
            class_names=self.class_names,
            source=self.source,
            target=self.target,
        )

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise ConfigError(f"unknown split {name!r}; valid splits: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def summary(self) -> str:
        sizes = "/".join(str(len(self.split(s))) for s in SPLIT_NAMES)
        task = f"{self.num_classes} classes" if self.task == "classification" else "regression"
        shape = "texts" if self.kind == "text" else f"{self.num_features} features"
        return f"{self.name}: {shape}, {task}, train/val/test {sizes} (seed {self.seed})"


@dataclass(frozen=True)
class Preparation:
    """A dataset's fitted preprocessing with its task and class names: what `predict --data NEW_FILE` needs to
    prepare new data as the training data was (`save` writes it as JSON beside a model, `read_preparation`
    reads it back, checked field by field)."""

    preprocessing: Preprocessing
    task: Task
    class_names: tuple[str, ...]
    source: str = ""
    target: str | None = None

    def prepare(self, path: str | os.PathLike) -> tuple[torch.Tensor | Texts, torch.Tensor | None]:
        """Every row of the file or folder `path` prepared: `(X, y)`, `y` None when it has no labels."""
        return prepare_inputs(
            path, self.preprocessing, class_names=self.class_names, task=self.task, target=self.target
        )

    def save(self, path: str | os.PathLike) -> Path:
        from ._atomic import write_json

        document = {
            "format": PREPARATION_FORMAT,
            "task": self.task,
            "class_names": list(self.class_names),
            "source": self.source,
            "target": self.target,
            "preprocessing": self.preprocessing.to_dict(),
        }
        write_json(path, document)
        return Path(path)


PREPARATION_FORMAT = "modelfusion.preparation/1"
MAX_PREPARATION_BYTES = 256 * 2**20  # a table's categories and an image's statistics, with room


def read_preparation(path: str | os.PathLike) -> Preparation:
    """A `Preparation` saved by `Preparation.save`; anything else in the file is one `DataError` naming it."""
    from ._files import read_json_object
    from .errors import CheckpointError
    from .preprocessing import preprocessing_from_dict

    try:
        document = read_json_object(path, "preprocessing file", MAX_PREPARATION_BYTES)
    except CheckpointError as err:
        raise DataError(str(err)) from None
    if document.get("format") != PREPARATION_FORMAT:
        raise DataError(f"{path}: not a preprocessing saved by modelfusion (format {document.get('format')!r})")
    task, names = document.get("task"), document.get("class_names")
    if task not in TASKS:
        raise DataError(f"{path}: field task must be one of {', '.join(TASKS)}, got {task!r:.40}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise DataError(f"{path}: field class_names must be a list of distinct names")
    source, target = document.get("source", ""), document.get("target")
    if target is not None and not isinstance(target, str):
        raise DataError(f"{path}: field target must be a column name or null")
    return Preparation(
        preprocessing=preprocessing_from_dict(document.get("preprocessing"), source=str(path)),
        task=task,
        class_names=tuple(names),
        source=source if isinstance(source, str) else "",
        target=target,
    )


def find_preparation(checkpoints: Sequence[str | os.PathLike]) -> Path | None:
    """The preprocessing saved with the first checkpoint: `preprocessing.json` in its folder or the folder above
    (where `auto` and `demo` write it beside `model.*` and `members/`), or None."""

    if not checkpoints:
        return None
    first = Path(checkpoints[0]).absolute()
    for folder in (first.parent, first.parent.parent):
        candidate = folder / PREPROCESSING_FILE
        if candidate.is_file():
            return candidate
    return None


def prediction_inputs(
    choice,
    checkpoints: Sequence[str | os.PathLike] = (),
    *,
    seed: int = 0,
    split: str | None = None,
    preprocessing: str | os.PathLike | None = None,
) -> tuple[torch.Tensor | Texts, torch.Tensor | None, str, Path | None]:
    """What `predict` runs the members on, from a `DataChoice`: `(X, y, split name, preprocessing used)`.

    New data: a `--data` file with a preprocessing (`preprocessing`, or the one saved beside the checkpoints)
    and no `split` is prepared row by row as the training data was, every row predicted (split "new").
    Otherwise: the `split` (default test) of the dataset or file, split as every command splits it.
    """
    if preprocessing is not None and choice.data is None:
        raise ConfigError("--preprocessing prepares a --data file; give the new data with --data")
    if preprocessing is not None and split is not None:
        raise ConfigError("--preprocessing predicts every row of --data; drop --split, or drop --preprocessing")
    found = preprocessing or (find_preparation(checkpoints) if choice.data is not None and split is None else None)
    if found is not None:
        X, y = read_preparation(found).prepare(choice.data)
        return X, y, "new", Path(found)
    part = choice.load(seed=seed).split(split or "test")
    return part.X, part.y, part.name, None


@dataclass(frozen=True)
class _RawData:
    X: np.ndarray
    y: np.ndarray
    task: Task
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    image_shape: tuple[int, ...] | None
    source: str
    # Official test samples, kept apart from the seeded split when the dataset defines them.
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


DATASETS: Registry[Callable[[], _RawData]] = Registry("dataset")


def _from_sklearn(bunch, task: Task, image_shape=None, source="") -> _RawData:
    names = tuple(str(n) for n in getattr(bunch, "target_names", ())) if task == "classification" else ()
    return _RawData(
        X=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target),
        task=task,
        class_names=names,
        feature_names=tuple(str(f) for f in bunch.feature_names),
        image_shape=image_shape,
        source=source,
    )


@DATASETS.register("digits")
def _digits() -> _RawData:
    return _from_sklearn(
        sk_datasets.load_digits(),
        "classification",
        (1, 8, 8),
        "scikit-learn load_digits (UCI optdigits, 8x8)",
    )


@DATASETS.register("breast_cancer")
def _breast_cancer() -> _RawData:
    return _from_sklearn(sk_datasets.load_breast_cancer(), "classification", source="scikit-learn (WDBC)")


@DATASETS.register("wine")
def _wine() -> _RawData:
    return _from_sklearn(sk_datasets.load_wine(), "classification", source="scikit-learn (UCI wine)")


@DATASETS.register("diabetes")
def _diabetes() -> _RawData:
    return _from_sklearn(sk_datasets.load_diabetes(), "regression", source="scikit-learn (Efron et al. 2004)")


@DATASETS.register("mnist1d")
def _mnist1d() -> _RawData:
    """MNIST-1D (Greydanus, 2020), generated locally with the package's default arguments (seed 42)."""
    # Imported here: mnist1d pulls in scipy.interpolate and matplotlib, which other datasets do not need.
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds Python's and NumPy's global generators; leave the caller's state as it was.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    length = data["x"].shape[1]
    return _RawData(
        X=np.asarray(data["x"], dtype=np.float64),
        y=np.asarray(data["y"]),
        task="classification",
        class_names=tuple(str(d) for d in range(10)),
        feature_names=tuple(f"t{i}" for i in range(length)),
        image_shape=(1, length),
        source="mnist1d make_dataset(get_dataset_args()), generated locally",
        X_test=np.asarray(data["x_test"], dtype=np.float64),
        y_test=np.asarray(data["y_test"]),
    )


@functools.lru_cache(maxsize=8)
def _raw(name: str) -> _RawData:
    return DATASETS[name]()


def _split_indices(raw: _RawData, seed: int) -> dict[str, np.ndarray]:
    n = len(raw.y)
    indices = np.arange(n)
    stratify = raw.y if raw.task == "classification" else None
    if raw.X_test is not None:
        # The dataset's official test set is the test split; its training part is split 80/20 into train/val.
        train, val = train_test_split(indices, test_size=0.2, random_state=seed, stratify=stratify)
        return {"train": train, "val": val}
    rest, test = train_test_split(indices, test_size=0.2, random_state=seed, stratify=stratify)
    rest_stratify = raw.y[rest] if stratify is not None else None
    train, val = train_test_split(rest, test_size=0.25, random_state=seed, stratify=rest_stratify)
    return {"train": train, "val": val, "test": test}


@checked
def load_dataset(name: str, seed: int = 0, *, as_images: bool = False) -> Dataset:
    """Load an embedded dataset with stratified train/val/test splits, standardized with train statistics.

    Splits are 60/20/20 (mnist1d: its 1,000 official test samples are the test split and its 4,000
    training samples are split 80/20 into train/val). The same `seed` always gives the same split.

    Args:
        name: one of `DATASETS.names()`: digits, breast_cancer, wine, diabetes, mnist1d.
        seed: seed of the split.
        as_images: return `X` channels-first for CNNs (`[N, 1, 8, 8]` for digits, `[N, 1, 40]` for mnist1d).

    Returns:
        A `Dataset` whose splits hold float32 features and int64 labels (float32 values for regression).

    Example:
        >>> data = load_dataset("digits")
        >>> data.train.X.shape, data.num_classes
        (torch.Size([1077, 64]), 10)
    """
    raw = _raw(name)
    check_seed(seed)
    if as_images and raw.image_shape is None:
        raise ConfigError(f"dataset {name!r} is tabular and has no image form; drop as_images")
    parts = _split_indices(raw, seed)
    arrays = {split: (raw.X[idx], raw.y[idx]) for split, idx in parts.items()}
    if "test" not in arrays:
        arrays["test"] = (raw.X_test, raw.y_test)

    mean = arrays["train"][0].mean(axis=0)
    std = arrays["train"][0].std(axis=0)
    std[std == 0] = 1.0  # constant features (digits' corner pixels) stay zero instead of dividing by zero

    shape = raw.image_shape if as_images else (raw.X.shape[1],)
    target_dtype = torch.int64 if raw.task == "classification" else torch.float32
    splits = {
        split: Split(
            name=split,
            X=torch.as_tensor((X - mean) / std, dtype=torch.float32).reshape(len(X), *shape),
            y=torch.as_tensor(y, dtype=target_dtype),
        )
        for split, (X, y) in arrays.items()
    }
    return Dataset(
        name=name,
        task=raw.task,
        class_names=raw.class_names,
        feature_names=raw.feature_names,
        image_shape=raw.image_shape,
        seed=seed,
        source=raw.source,
        kind=_kind_of_shape(raw.image_shape),
        **splits,
    )


def _kind_of_shape(image_shape: tuple[int, ...] | None) -> Kind:
    return "tabular" if image_shape is None else "image" if len(image_shape) == 3 else "sequence"


# -- the user's data -------------------------------------------------------------------------------------
# Whole-number labels with at most this many distinct values mean classification when no task is given.
MAX_GUESSED_CLASSES = 20


@checked
def load_data(
    path: str | os.PathLike,
    *,
    target: str | None = None,
    task: Task | None = None,
    kind: Kind | None = None,
    val: float = 0.2,
    test: float = 0.2,
    seed: int = 0,
    as_images: bool = False,
    image_size: tuple[int, int] | None = None,
) -> Dataset:
    """Read the user's data from a file or folder into a `Dataset` (formats: `modelfusion.readers`).

    Splits are stratified (classification) and seeded: `test` and `val` are fractions of all rows, unless the
    data fixes splits (an `.npz` with `X_val`/`X_test`, a `split` column, `train/`, `val/`, `test/` image
    folders, a saved `DatasetDict`); a split it does not fix is drawn from its training rows (`val`, `test`
    then being fractions of those). Everything fitted (standardization, imputation, categories, image size)
    is fitted on the training split only and kept as `Dataset.preprocessing`.

    Args:
        path: an `.npz`, `.csv`, `.tsv` or `.parquet` file, a folder of class sub-folders of images, or a folder
            written by `datasets`' `save_to_disk`.
        target: the label column of a table (default: the column named target, label, labels, class or y).
        task: "classification" or "regression" (default: classification for text labels and for whole-number
            labels with at most 20 distinct values).
        kind: "tabular", "image", "sequence" or "text" (default: from the data's shape; a 2-D array whose
            neighbouring columns correlate strongly is a sequence).
        val, test: the fractions of rows drawn for validation and test.
        seed: seed of the split.
        as_images: give images and sequences channels-first (`[N, C, H, W]`, `[N, C, L]`) instead of flat.
        image_size: (width, height) images are resized to (default: the most common size in the training split).

    Raises:
        DataError: the file, the row or column, and what is wrong (no target column, one class, a missing
            label, mixed types, an empty file, an image that does not decode, ...).

    Example:
        >>> data = load_data("penguins.csv", target="species")
        >>> data.kind, data.class_names
        ('tabular', ('Adelie', 'Chinstrap', 'Gentoo'))
    """
    from .readers import read_source

    source = read_source(path, target=target)
    name = Path(path).name if Path(path).is_dir() else Path(path).stem
    return _assemble(
        source,
        name=name,
        task=task,
        kind=kind,
        val=val,
        test=test,
        seed=seed,
        as_images=as_images,
        image_size=image_size,
        target=target,
    )


def prepare_inputs(
    path: str | os.PathLike,
    preprocessing: Preprocessing,
    *,
    class_names: Sequence[str] = (),
    task: Task = "classification",
    target: str | None = None,
) -> tuple[torch.Tensor | Texts, torch.Tensor | None]:
    """New data through a fitted preprocessing (`Dataset.preprocessing`, or one read back with
    `preprocessing_from_dict`): `(X, y)`; `y` (labels encoded by `class_names`) is None when the file has none.
    """
    from .readers import read_source

    source = read_source(path, target=target, labelled=False)
    X = _apply(preprocessing, source.features, source.path)
    if source.labels is None:
        return X, None
    return X, _encode_known(source, class_names, task)


def _apply(preprocessing: Preprocessing, features, where: str) -> torch.Tensor | Texts:
    expected = {
        TableEncoding: dict,
        TextColumn: (dict, Texts),
        ImageEncoding: np.ndarray,
        Standardize: np.ndarray,
    }[type(preprocessing)]
    if not isinstance(features, expected) or (
        isinstance(preprocessing, ImageEncoding) != (isinstance(features, np.ndarray) and features.dtype == object)
    ):
        raise DataError(f"{where}: not data of the form the model was trained on ({preprocessing.kind})")
    try:
        return preprocessing.apply(features)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _check_fractions(val: float, test: float) -> None:
    for value, name in ((val, "val"), (test, "test")):
        check_number(value, name, low=0, open_low=True)
        if value >= 1:
            raise ConfigError(f"{name} must be a fraction below 1, got {value!r}")
    if val + test >= 1:
        raise ConfigError(f"val + test must leave rows to train on, got {val} + {test}")


def _assemble(
    source,
    *,
    name: str,
    task: Task | None,
    kind: Kind | None,
    val: float,
    test: float,
    seed: int,
    as_images: bool,
    image_size: tuple[int, int] | None = None,
    target: str | None = None,
) -> Dataset:
    """Labels encoded, rows split, preprocessing fitted on the training rows: the Source as a Dataset."""
    from .readers import num_rows, take

    check_seed(seed)
    _check_fractions(val, test)
    if image_size is not None and (
        not isinstance(image_size, tuple | list)
        or len(image_size) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in image_size)
    ):
        raise ConfigError(f"image_size must be (width, height), whole numbers from 1 to 4096, got {image_size!r}")
    if task is not None and task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if num_rows(source.features) < 3:
        raise DataError(f"{source.path}: {num_rows(source.features)} rows; a train/val/test split needs at least 3")
    task, y, class_names = _encode_labels(source, task)
    rows = _split_rows(y, task, seed=seed, val=val, test=test, assigned=source.assigned, where=source.path)
    preprocessing, kind = _fit(source, take(source.features, rows["train"]), kind, as_images, image_size)
    target_dtype = torch.int64 if task == "classification" else torch.float32
    splits = {
        split: Split(split, _apply(preprocessing, take(source.features, index), source.path),
                     torch.as_tensor(y[index], dtype=target_dtype))
        for split, index in rows.items()
    }  # fmt: skip
    if isinstance(preprocessing, TableEncoding):
        feature_names = preprocessing.feature_names
    elif kind == "text":
        feature_names = ("text",)
    else:
        width = math.prod(splits["train"].X.shape[1:])
        feature_names = (
            source.feature_names if len(source.feature_names) == width else tuple(f"x{i}" for i in range(width))
        )
    image_shape = None
    if kind in ("image", "sequence"):
        scale = preprocessing.scale if isinstance(preprocessing, ImageEncoding) else preprocessing
        image_shape = tuple(scale.shape)
    return Dataset(
        name=name,
        task=task,
        class_names=class_names,
        feature_names=tuple(feature_names),
        image_shape=image_shape,
        seed=seed,
        source=source.path,
        kind=kind,
        preprocessing=preprocessing,
        target=target,
        **splits,
    )


# A column of strings averaging this many words is free text, not categories.
TEXT_MIN_WORDS = 3


def _text_column(table: dict, where: str) -> str | None:
    """The text column of a table whose only feature is free text (several words a value on average, or more
    distinct values than categories are kept), else None. Free text beside other features is refused: one-hot
    encoding sentences would only pretend to use them."""
    from .preprocessing import MAX_CATEGORIES

    def words(values: np.ndarray) -> float:
        present = [v for v in values if v is not None]
        return float(np.mean([len(v.split()) for v in present])) if present else 0.0

    texts = [n for n, v in table.items() if v.dtype == object and words(v) >= TEXT_MIN_WORDS]
    if len(table) == 1:
        ((name, values),) = table.items()
        many = values.dtype == object and len({v for v in values if v is not None}) > MAX_CATEGORIES
        return name if texts or many else None
    if texts:
        raise DataError(
            f"{where}: column {texts[0]!r} holds free text beside {len(table) - 1} other feature columns; keep it "
            "alone (with the target) for a text model, or drop it for a tabular one"
        )
    return None


def _fit(source, train, kind: Kind | None, as_images: bool, image_size) -> tuple[Preprocessing, Kind]:
    features = source.features
    if as_images and (isinstance(features, dict | Texts) or features.dtype.kind == "U"):
        raise ConfigError(f"{source.path} holds a table or texts, which have no image form; drop as_images")
    if isinstance(features, dict):
        text = _text_column(train, source.path)
        found: Kind = "text" if text else "tabular"
        _check_kind(kind, found, source.path, "a table")
        return (TextColumn(column=text), found) if text else (TableEncoding.fit(train), found)
    if isinstance(features, Texts) or features.dtype.kind == "U":
        _check_kind(kind, "text", source.path, "strings")
        return TextColumn(), "text"
    if features.dtype == object:  # image files
        _check_kind(kind, "image", source.path, "images")
        encoding, _ = ImageEncoding.fit(list(train), size=image_size, flatten=not as_images)
        return encoding, "image"
    kind = kind or infer_kind(train)
    if kind == "text":
        raise ConfigError(f"{source.path}: kind 'text' needs strings; the data holds numbers")
    train = np.asarray(train, dtype=np.float64)
    if kind == "image":
        if train.ndim == 2:
            raise ConfigError(f"{source.path}: kind 'image' needs arrays [N, C, H, W] or [N, H, W], got [N, F]")
        if train.ndim == 3:
            train = train[:, None]
    elif kind == "sequence" and train.ndim == 2:
        train = train[:, None]
    elif kind == "tabular":
        train = train.reshape(len(train), -1)
    if kind == "tabular" and as_images:
        raise ConfigError(f"{source.path} holds tabular data, which has no image form; drop as_images")
    return Standardize.fit(train, per_channel=kind == "image", flatten=not as_images), kind


def _check_kind(asked: Kind | None, found: Kind, where: str, what: str) -> None:
    if asked is not None and asked != found:
        raise ConfigError(f"{where} holds {what} ({found} data); kind {asked!r} does not apply")


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)
    return np.isnan(values)


def _encode_labels(source, task: Task | None) -> tuple[Task, np.ndarray, tuple[str, ...]]:
    """The task, the labels as class indices (or float values) and the class names."""
    labels = source.labels
    missing = _missing(labels)
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError(f"{source.path}: {source.target} {source.row(row)} has no label (empty or NaN); drop the row")
    texts = labels.dtype == object
    if texts and not all(isinstance(v, str) for v in labels):
        first = next(i for i, v in enumerate(labels) if not isinstance(v, str))
        raise DataError(f"{source.path}: {source.target} mixes strings and numbers ({source.row(first)}: "
                        f"{labels[first]!r}); give every label the same type")  # fmt: skip
    if task is None:
        whole = not texts and bool(np.all(labels == np.round(labels)))
        few = len(np.unique(labels)) <= MAX_GUESSED_CLASSES
        task = "classification" if texts or source.class_names is not None or (whole and few) else "regression"
    if task == "regression":
        if texts:
            raise DataError(f"{source.path}: {source.target} holds text ({labels[0]!r}); regression needs numbers")
        return task, labels.astype(np.float32), ()
    if source.class_names is not None and not texts:
        names = source.class_names
        bad = (labels < 0) | (labels >= len(names)) | (labels != np.round(labels))
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{source.path}: {source.target} {source.row(row)} is {labels[row]!r}, not a class index "
                            f"0..{len(names) - 1}")  # fmt: skip
        encoded = labels.astype(np.int64)
    else:
        values = np.unique(labels) if not texts else np.array(sorted(set(labels)), dtype=object)
        names = tuple(_label_name(v) for v in values)
        encoded = np.searchsorted(values, labels) if not texts else np.array([names.index(v) for v in labels])
    present = np.unique(encoded)
    if len(present) < 2:
        raise DataError(f"{source.path}: {source.target} has one class only ({names[int(present[0])]!r}); "
                        "classification needs two or more")  # fmt: skip
    return task, encoded.astype(np.int64), tuple(names)


def _encode_known(source, class_names: Sequence[str], task: Task) -> torch.Tensor:
    """Labels of new data in the class order the model was trained with."""
    labels = source.labels
    missing = _missing(labels)
    if missing.any():
        raise DataError(f"{source.path}: {source.target} {source.row(int(np.argmax(missing)))} has no label")
    if task == "regression":
        if labels.dtype == object:
            raise DataError(f"{source.path}: {source.target} holds text; regression needs numbers")
        return torch.as_tensor(labels, dtype=torch.float32)
    index = {name: i for i, name in enumerate(class_names)}
    encoded = []
    for row, value in enumerate(labels):
        key = value if isinstance(value, str) else _label_name(value)
        if source.class_names is not None and not isinstance(value, str):
            key = source.class_names[int(value)] if 0 <= value < len(source.class_names) else key
        if key not in index:
            raise DataError(f"{source.path}: {source.target} {source.row(row)} is {value!r}, a class the model "
                            f"was not trained on ({', '.join(class_names[:10])})")  # fmt: skip
        encoded.append(index[key])
    return torch.as_tensor(encoded, dtype=torch.int64)


def _label_name(value) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(float(value))


def _split_rows(
    y: np.ndarray, task: Task, *, seed: int, val: float, test: float, assigned: np.ndarray | None, where: str
) -> dict[str, np.ndarray]:
    """Row indices of each split: the ones `assigned` fixes, the others drawn (stratified, seeded)."""
    rows = np.arange(len(y))
    fixed = {} if assigned is None else {s: rows[assigned == s] for s in SPLIT_NAMES if (assigned == s).any()}
    if assigned is not None and "train" not in fixed:
        raise DataError(f"{where}: the data fixes no training rows; mark some rows train")
    pool = fixed.get("train", rows)
    drawn: dict[str, np.ndarray] = {}
    for split, fraction in (("test", test), ("val", val)):
        if split in fixed:
            continue
        if assigned is None and split == "val":
            fraction = val / (1 - test)  # of the rows left after test: 0.2 / 0.8 = 0.25, as load_dataset draws
        pool, drawn[split] = _draw(pool, y, task, math.ceil(fraction * len(pool)), seed, where, split)
    return {"train": pool, **{s: fixed.get(s, drawn.get(s)) for s in ("val", "test")}}


def _draw(pool: np.ndarray, y, task: Task, size: int, seed: int, where: str, split: str):
    if size >= len(pool):
        raise DataError(f"{where}: {len(pool)} training rows cannot give {size} to the {split} split; add rows")
    stratify = y[pool] if task == "classification" else None
    try:
        kept, taken = train_test_split(pool, test_size=size, random_state=seed, stratify=stratify)
    except ValueError as err:  # a class with one sample, or fewer rows than classes
        counts = np.bincount(y[pool]) if stratify is not None else None
        if counts is not None:
            rare = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
            raise DataError(
                f"{where}: cannot draw a stratified {split} split of {size} rows ({first_line(err)}); class {rare} "
                f"has {int(counts[rare])} training rows: add rows, drop rare classes, or fix the splits"
            ) from None
        raise DataError(f"{where}: cannot draw the {split} split ({first_line(err)})") from None
    return kept, taken  # in the order train_test_split gives, as load_dataset keeps them
