"""Embedded data: scikit-learn's bundled datasets and mnist1d generated locally, with fixed seeded splits.

Nothing here touches the network: scikit-learn ships `digits`, `breast_cancer`, `wine` and `diabetes` inside
the package, and mnist1d is generated from its templates with `make_dataset` (never its download function).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

from ._checks import check_count, check_seed
from .errors import ConfigError
from .registry import Registry
from .tasks import Task

__all__ = ["Split", "Dataset", "DATASETS", "load_dataset"]

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: features `X` float32 `[N, *input_shape]` and targets `y` (int64 labels or float32 values)."""

    name: str
    X: torch.Tensor
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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.X.shape[1:])

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise ConfigError(f"unknown split {name!r}; valid splits: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def summary(self) -> str:
        sizes = "/".join(str(len(self.split(s))) for s in SPLIT_NAMES)
        kind = f"{self.num_classes} classes" if self.task == "classification" else "regression"
        return f"{self.name}: {self.num_features} features, {kind}, train/val/test {sizes} (seed {self.seed})"


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
        **splits,
    )
