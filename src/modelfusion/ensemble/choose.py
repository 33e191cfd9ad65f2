"""Which fusion to report: chosen by cross-validation on the validation split, never by the test split."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from ..errors import ConfigError, InvalidInputError, OverconfidenceWarning
from ..evaluate.metrics import classification_metrics
from ..predictions import Predictions, check_fit_labels, check_fit_split
from .registry import make_combiner

__all__ = ["Choice", "choose_combiner"]

_METRICS = {"classification": ("nll", "accuracy"), "regression": ("mse",)}


@dataclass
class Choice:
    """The combiner chosen on validation, and every candidate's cross-validated scores."""

    name: str
    metric: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    not_eligible: tuple[str, ...] = ()  # scored, but their outputs are not probabilities to judge by NLL

    def reason(self) -> str:
        """One line: the chosen combiner's cross-validated score against the runner-up's."""
        eligible = [n for n in self.scores if n not in self.not_eligible]
        ranked = sorted(eligible, key=lambda n: _loss(self.scores[n], self.metric))
        line = f"{self.name}: cross-validated {self.metric} {self.scores[self.name][self.metric]:.4f}"
        if len(ranked) > 1:
            runner_up = ranked[1]
            line += f", next {runner_up} {self.scores[runner_up][self.metric]:.4f}"
        if self.not_eligible:
            line += f"; not eligible by NLL (vote shares, not probabilities): {', '.join(self.not_eligible)}"
        return line + " (on the validation split only)"


def _loss(scores: dict[str, float], metric: str) -> float:
    return -scores[metric] if metric == "accuracy" else scores[metric]


def choose_combiner(
    val: Predictions,
    methods: Sequence[str],
    *,
    metric: str | None = None,
    folds: int = 5,
    seed: int = 0,
    params: dict[str, dict] | None = None,
    X: torch.Tensor | None = None,
) -> Choice:
    """Cross-validate each combiner in `methods` on `val` and choose the best by `metric`.

    Each combiner is fitted on `folds - 1` folds of the validation samples and scores the held-out fold, so
    combiners that learn (weights, stacking) are judged on samples they were not fitted on, like those that
    learn nothing. The test split is never involved: what is reported on test is then one choice, not the best
    of many.

    Args:
        val: validation predictions with labels.
        methods: candidate combiner names.
        metric: "nll" (default) or "accuracy" for classification, "mse" for regression; ties go to the
            earlier name in `methods`. By NLL, combiners whose outputs are not probability estimates (hard
            voting's vote shares: one-hot when the members agree, so NLL 0 on a small, easy validation split) are
            scored but not chosen, unless no other candidate is left.
        folds: folds over the validation samples (stratified for classification).
        seed: seed of the fold assignment.
        params: per-method constructor arguments.
        X: the validation inputs, for combiners that use them (stacking with passthrough).
    """
    metric = _check_choice(val, methods, metric, folds)
    params = params or {}
    y = val.labels.numpy()
    splitter = (StratifiedKFold if val.task == "classification" else KFold)(folds, shuffle=True, random_state=seed)
    splits = [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in splitter.split(np.zeros(len(y)), y)]
    scores = {name: _cross_validated(val, name, params.get(name, {}), splits, X) for name in methods}
    not_eligible = tuple(
        name
        for name in methods
        if metric == "nll" and not make_combiner(name, **params.get(name, {})).estimates_probabilities
    )
    eligible = [name for name in methods if name not in not_eligible] or list(methods)
    best = min(eligible, key=lambda n: _loss(scores[n], metric))
    return Choice(best, metric, scores, tuple(n for n in not_eligible if n not in eligible))


def _check_choice(val: Predictions, methods: Sequence[str], metric: str | None, folds: int) -> str:
    """The metric to choose by (the task's default when None), after refusing what cannot be chosen on."""
    check_fit_split(val, "choose_combiner")
    if val.labels is None:
        raise InvalidInputError("choose_combiner: the validation predictions have no labels to score on")
    check_fit_labels(val.labels, val.task, "choose_combiner")
    metric = metric or _METRICS[val.task][0]
    if metric not in _METRICS[val.task]:
        raise ConfigError(f"choose_combiner: metric for {val.task} must be one of {_METRICS[val.task]}, got {metric!r}")
    if folds < 2 or not methods:
        raise ConfigError(f"choose_combiner needs folds >= 2 and at least one method, got {folds} and {list(methods)}")
    return metric


def _cross_validated(val: Predictions, name: str, params: dict, splits: list, X: torch.Tensor | None) -> dict:
    """The combiner `name`'s scores on `val` from its held-out folds: each fold fused by the combiner fitted on
    the other folds."""
    held_out = torch.empty(val.outputs.shape[1:], dtype=torch.float64)  # fused [N, C] or [N]
    for fit_rows, score_rows in splits:
        combiner = make_combiner(name, **params)
        with warnings.catch_warnings():  # once, from the fit on the whole split, is enough
            warnings.simplefilter("ignore", OverconfidenceWarning)
            combiner.fit(_rows(val, fit_rows), X=None if X is None else X[fit_rows])
        held_out[score_rows] = combiner.fuse(_rows(val, score_rows), X=None if X is None else X[score_rows]).double()
    y = val.labels.numpy()
    if val.task == "classification":
        metrics = classification_metrics(held_out.numpy(), y)
        return {"nll": float(metrics["nll"]), "accuracy": float(metrics["accuracy"])}
    return {"mse": float(((held_out.numpy() - y) ** 2).mean())}


def _rows(preds: Predictions, rows: torch.Tensor) -> Predictions:
    return Predictions(
        preds.outputs[:, rows], preds.labels[rows], preds.member_names, preds.task, preds.split, preds.classes
    )
