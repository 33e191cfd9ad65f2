"""Harmful training samples: suspected mislabels by confident learning on out-of-fold predictions of K-fold
members, plus outliers far from the rest of the inputs; `clean` drops them and refits to show what it bought."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._atomic import write_json
from .._checks import check_count, check_number, check_seed, checked
from .._deprecation import deprecated
from ..datasets import Dataset, Split
from ..errors import ConfigError, InvalidInputError
from ..members import TorchMember
from ..predictions import Predictions
from ..training import TrainingRecipe

__all__ = [
    "LabelIssues",
    "Cleaned",
    "confident_learning",
    "input_outliers",
    "find_label_issues",
    "clean",
    "inject_label_noise",
]


def confident_learning(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Which samples are likely mislabeled, from out-of-sample probabilities `[N, C]` and given labels `[N]`:
    confident learning with pruning by noise rate (Northcutt, Jiang & Chuang, 2021, "Confident learning:
    estimating uncertainty in dataset labels", https://arxiv.org/abs/1911.00068), step for step as cleanlab 2.9's
    `filter.find_label_issues` with its defaults, so that both flag the same samples on the same probabilities.

    1. Per class j, the threshold t_j is the mean probability of j over the samples labeled j.
    2. The confident joint counts, for each given label, the samples whose probability reaches the threshold of
       at least one class (to 1e-6): as that class if only one, else as their most probable class. Each
       diagonal cell counts at least 1. It is calibrated so that each row sums to its label's count and the
       whole to N, then rounded to integers keeping the row sums.
    3. Each class keeps at least one sample: a diagonal cell raised to 1 takes that from its column's other
       non-zero cells, whose fractions are then dropped (truncated).
    4. For each off-diagonal cell (given i, true j), that many samples labeled i are flagged: those with the
       largest margin p_j - p_i, each cell on its own (a sample may be flagged by several). A class with a
       single sample is left alone, and no sample whose most probable class is its given label is flagged.

    Returns a boolean mask `[N]`.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n, num_classes = probs.shape
    counts = np.bincount(labels, minlength=num_classes)
    # 1. thresholds (a class without samples gets 2, which no probability reaches)
    thresholds = np.array([probs[labels == j, j].mean() if counts[j] else 2.0 for j in range(num_classes)])
    thresholds = np.clip(thresholds, 2e-6, None)
    # 2. the confident joint, rows: given labels, columns: true labels
    confident = probs >= thresholds - 1e-6
    how_many = confident.sum(1)
    guess = np.where(how_many > 1, probs.argmax(1), confident.argmax(1))
    # counted as [true, given] and transposed, as cleanlab does: the layout sets the order in which the
    # calibration's total is summed, whose last bits decide ties when the counts are rounded
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(joint, (guess[how_many > 0], labels[how_many > 0]), 1)
    joint = joint.T
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    calibrated = (joint.T / np.clip(joint.sum(1), 1e-100, None) * counts).T
    calibrated = calibrated / np.clip(calibrated.sum(), 1e-100, None) * counts.sum()
    joint = _rounded_keeping_row_sums(calibrated)
    # 3. how many to flag, rows: true labels, columns: given labels; at least one sample kept per class
    prune = joint.T.astype(float)
    diagonal = np.maximum(prune.diagonal(), 1)
    raised = diagonal - prune.diagonal()
    others = np.maximum(np.count_nonzero(prune, axis=0) - 1.0, 1.0)
    prune = np.clip(prune - raised / others, 0, None)
    np.fill_diagonal(prune, diagonal)
    prune = _rounded_keeping_row_sums(prune.astype(int))
    # 4. the samples with the largest margins, cell by cell
    flagged = np.zeros(n, dtype=bool)
    for given in range(num_classes):
        rows = np.flatnonzero(labels == given)
        if len(rows) <= 1:
            continue
        mask = np.zeros(len(rows), dtype=bool)
        for true in range(num_classes):
            remove = prune[true, given]
            if true != given and remove > 0:
                margin = probs[rows, true] - probs[rows, given]
                mask[np.argsort(-margin)[:remove]] = True  # numpy's default sort, as cleanlab's
        flagged[rows] = mask
    agrees = probs.copy()
    agrees[np.arange(n), labels] += 1e-6
    flagged[agrees.argmax(1) == labels] = False
    return flagged


def _rounded_keeping_row_sums(matrix: np.ndarray) -> np.ndarray:
    """Each row rounded to integers that keep its (rounded) sum: the entries whose rounding lost (or gained)
    the most are moved by one, as cleanlab's `round_preserving_row_totals`."""
    rows = []
    for floats in np.asarray(matrix, dtype=float):
        ints = floats.round()
        target, total = floats.sum().round(), ints.sum().round()
        while abs(total - target) > 1e-6:
            difference = np.round(target - total)
            step = -1 if difference < 0 else 1
            for i in np.argsort(floats - ints)[::-step][: min(int(abs(difference)), len(floats))]:
                ints[i] += step
            total = ints.sum().round()
        rows.append(ints)
    return np.array(rows).astype(int)


def input_outliers(X: torch.Tensor) -> np.ndarray:
    """Which samples lie far from the others: Mahalanobis distance to the mean of `X` (Ledoit-Wolf covariance,
    Lee et al., 2018) beyond Tukey's far-out fence, the upper quartile plus three interquartile ranges.
    Labels play no part, so mislabels do not hide an outlier. Returns a boolean mask `[N]`."""
    from sklearn.covariance import LedoitWolf

    flat = X.reshape(len(X), -1).double().numpy()
    distances = np.sqrt(LedoitWolf().fit(flat).mahalanobis(flat))
    q1, q3 = np.percentile(distances, [25, 75])
    return distances > q3 + 3 * (q3 - q1)


@dataclass(frozen=True)
class LabelIssues:
    """What `find_label_issues` found in a training split.

    Attributes:
        indices: sorted row indices of every suspected sample (mislabeled or outlier).
        label_issues: sorted indices of the suspected mislabels (confident learning).
        outliers: sorted indices of the input outliers.
        suggested_labels: `[N]` the out-of-fold prediction for each sample (what a relabeling would use).
        oof: the out-of-fold predictions of the K-fold members the issues were read from.
        members: the K-fold members (`TrainedMembers`), when they were trained here.
    """

    indices: np.ndarray
    label_issues: np.ndarray
    outliers: np.ndarray
    suggested_labels: np.ndarray
    oof: Predictions
    members: object | None = None


def _recipe(data: Dataset, recipe):
    from ..training import RECIPES, TrainingRecipe, recipe_for

    if recipe is None:
        return recipe_for(data)
    if isinstance(recipe, str):
        return RECIPES[recipe]
    if isinstance(recipe, TrainingRecipe):
        return recipe
    raise ConfigError(f"recipe must be a TrainingRecipe or a name in RECIPES, got {type(recipe).__name__}")


def _recipe_or_predictions(recipe, predictions, members) -> tuple[object, Predictions | None]:
    """`recipe` and `predictions`, from the deprecated `members` (which meant either) when it is given."""
    if members is not None:
        deprecated(
            "members= in find_label_issues and clean",
            "recipe= (a TrainingRecipe or a name in RECIPES) or predictions= (out-of-fold Predictions)",
        )
        if recipe is not None or predictions is not None:
            raise ConfigError("give recipe= or predictions=, not members= as well")
        return (None, members) if isinstance(members, Predictions) else (members, None)
    if recipe is not None and predictions is not None:
        raise ConfigError("give recipe= (fold members to train) or predictions= (out-of-fold ones), not both")
    return recipe, predictions


@checked
def find_label_issues(
    data: Dataset,
    *,
    recipe: TrainingRecipe | str | None = None,
    predictions: Predictions | None = None,
    folds: int = 5,
    seed: int = 0,
    members: object = None,
) -> LabelIssues:
    """The training samples of `data` that are likely mislabeled, and its input outliers.

    K-fold members (`train_members(recipe, data, method="kfold", n=folds)`) predict each training sample
    without having seen it; confident learning (`confident_learning`, Northcutt et al., 2021) reads the
    mislabels from those out-of-fold probabilities. Validation only chooses the members' epochs; the test
    split is never used.

    Args:
        data: the dataset whose `train` split is screened.
        recipe: how the fold members are trained: a `TrainingRecipe` or a name in `RECIPES` (default:
            `recipe_for(data)`).
        predictions: instead, out-of-fold `Predictions` of the training split already made.
        folds: number of folds (members).
        seed: seed of the folds and the members.
        members: deprecated: `recipe` or `predictions`, whichever it is.

    Example:
        >>> issues = find_label_issues(load_dataset("digits"), recipe="digits-mlp")
        >>> issues.label_issues[:5], len(issues.outliers)
    """
    check_count(folds, "folds")
    check_seed(seed)
    if data.task != "classification":
        raise InvalidInputError(f"label issues exist for classification; {data.name!r} is a {data.task} dataset")
    recipe, predictions = _recipe_or_predictions(recipe, predictions, members)
    trained = None
    if predictions is not None:
        oof = predictions
        if oof.task != "classification" or oof.num_samples != len(data.train) or oof.labels is None:
            raise InvalidInputError(
                f"out-of-fold predictions must be of the {len(data.train)} labeled training samples of a "
                f"classifier, got {oof.num_samples} samples ({oof.task})"
            )
        if not torch.equal(oof.labels, data.train.y):
            raise InvalidInputError("the out-of-fold predictions' labels differ from data.train.y; pass the same split")
    else:
        from ..ensemble.train import train_members

        if folds < 2:
            raise ConfigError(f"folds must be at least 2 (each member leaves one fold out), got {folds}")
        trained = train_members(_recipe(data, recipe), data, method="kfold", n=folds, seed=seed)
        oof = trained.oof
    probs = oof.probabilities(torch.float64).mean(0).numpy()  # [N, C]
    labels = data.train.y.numpy()
    mislabeled = confident_learning(probs, labels)
    outlying = input_outliers(data.train.X)
    return LabelIssues(
        indices=np.flatnonzero(mislabeled | outlying),
        label_issues=np.flatnonzero(mislabeled),
        outliers=np.flatnonzero(outlying),
        suggested_labels=probs.argmax(1),
        oof=oof,
        members=trained,
    )


CLEANING_STRATEGIES = ("drop", "relabel", "auto")


@dataclass(frozen=True)
class Cleaned:
    """What `clean` did: the issues, the strategy used, the cleaned dataset, the K-fold fusion (`MeanOfModels`)
    trained before and after cleaning, and the accuracy of each on the validation and test splits
    (`candidates`: each strategy tried, by its validation accuracy)."""

    issues: LabelIssues
    strategy: str
    data: Dataset
    before: TorchMember
    after: TorchMember
    accuracy: dict[str, dict[str, float]]
    candidates: dict[str, float]
    folds: int = 5

    def to_json(self, *, flipped: np.ndarray | None = None, rate: float | None = None) -> dict:
        """What was found and what cleaning did, as JSON: the suspected mislabels (training indices) with their
        suggested labels, the outliers, the strategy, each strategy's validation accuracy and the fusion's
        accuracy before and after; with `flipped` (the indices `inject_label_noise` changed, at `rate`), how
        many of them were found."""
        issues = self.issues
        found = {
            "dataset": self.data.name,
            "seed": self.data.seed,
            "folds": self.folds,
            "label_issues": issues.label_issues.tolist(),
            "suggested_labels": issues.suggested_labels[issues.label_issues].tolist(),
            "outliers": issues.outliers.tolist(),
            "strategy": self.strategy,
            "validation_accuracy_by_strategy": self.candidates,
            "accuracy": self.accuracy,
        }
        if flipped is not None:
            found["injected"] = {"rate": rate, "flipped": flipped.tolist(), "found": self.found_among(flipped)}
        return found

    def found_among(self, flipped: np.ndarray) -> int:
        """How many of the training indices `flipped` (labels known to be wrong) were found as mislabels."""
        return len(np.intersect1d(self.issues.label_issues, flipped))

    def save(self, path: str | os.PathLike, *, flipped: np.ndarray | None = None, rate: float | None = None) -> Path:
        """Write `to_json(flipped=..., rate=...)` to `path` (atomically)."""
        write_json(path, self.to_json(flipped=flipped, rate=rate))
        return Path(path)


@checked
def clean(
    data: Dataset,
    issues: LabelIssues | None = None,
    *,
    recipe: TrainingRecipe | str | None = None,
    predictions: Predictions | None = None,
    folds: int = 5,
    seed: int = 0,
    strategy: str = "auto",
    members: object = None,
) -> Cleaned:
    """Clean `data.train` of the suspected samples (`find_label_issues`, or the `issues` given) and refit the
    K-fold fusion, to show what cleaning recovered. Test accuracy is reported, never used.

    Strategies: "drop" removes the suspects; "relabel" gives the suspected mislabels their out-of-fold predicted
    label (label correction, Northcutt et al. 2021, section 6) and removes the outliers; "auto" tries both and
    keeps the one whose fusion is more accurate on the validation split (more data kept is worth most when the
    finder is precise; dropping is safer when it is not). `recipe` trains the fold members (and finds the
    issues with `predictions`, as in `find_label_issues`, unless `issues` are given).

    Example:
        >>> noisy, flipped = inject_label_noise(data.train, 0.2, seed=0)
        >>> result = clean(dataclasses.replace(data, train=noisy), recipe="digits-mlp")
        >>> result.strategy, result.accuracy["test"]        # {"before": ..., "after": ...}
    """
    from ..ensemble.train import train_members

    check_count(folds, "folds")
    if strategy not in CLEANING_STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(CLEANING_STRATEGIES)}, got {strategy!r}")
    recipe, predictions = _recipe_or_predictions(recipe, predictions, members)
    if issues is None:
        issues = find_label_issues(data, recipe=recipe, predictions=predictions, folds=folds, seed=seed)
    recipe = _recipe(data, recipe)
    before = issues.members or train_members(recipe, data, method="kfold", n=folds, seed=seed)

    def accuracy(member: TorchMember, split: str) -> float:
        chosen = data.split(split)
        return float((member.predict(chosen.X).argmax(1) == chosen.y).double().mean())

    tried = {}
    for name in ("drop", "relabel") if strategy == "auto" else (strategy,):
        cleaned = dataclasses.replace(data, train=_cleaned_split(data.train, issues, name))
        after = train_members(recipe, cleaned, method="kfold", n=folds, seed=seed).bag(f"{recipe.name}_{name}_bag")
        tried[name] = (cleaned, after, accuracy(after, "val"))
    chosen = max(tried, key=lambda name: tried[name][2])  # ties: "drop", the first tried
    cleaned, after, _ = tried[chosen]
    fused = {"before": before.bag(f"{recipe.name}_noisy_bag"), "after": after}
    scores = {split: {name: accuracy(member, split) for name, member in fused.items()} for split in ("val", "test")}
    return Cleaned(issues, chosen, cleaned, fused["before"], after, scores, {n: v[2] for n, v in tried.items()}, folds)


def _cleaned_split(train: Split, issues: LabelIssues, strategy: str) -> Split:
    if strategy == "drop":
        keep = torch.as_tensor(np.setdiff1d(np.arange(len(train)), issues.indices))
        return Split("train", train.X[keep], train.y[keep])
    labels = train.y.clone()
    labels[torch.as_tensor(issues.label_issues)] = torch.as_tensor(
        issues.suggested_labels[issues.label_issues], dtype=labels.dtype
    )
    keep = torch.as_tensor(np.setdiff1d(np.arange(len(train)), issues.outliers))
    return Split("train", train.X[keep], labels[keep])


def inject_label_noise(split: Split, rate: float, *, seed: int = 0) -> tuple[Split, np.ndarray]:
    """`split` with symmetric label noise: `round(rate * N)` samples drawn with `seed` each get another class,
    drawn uniformly. Returns the noisy split and the sorted indices of the flipped samples."""
    check_number(rate, "rate", low=0.0)
    check_seed(seed)
    if rate > 1:
        raise ConfigError(f"the noise rate is a share of samples from 0 to 1, got {rate}")
    labels = split.y.numpy()
    num_classes = int(labels.max()) + 1
    if num_classes < 2:
        raise InvalidInputError("label noise needs at least two classes")
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False))
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
    return Split(split.name, split.X, torch.from_numpy(noisy)), flipped
