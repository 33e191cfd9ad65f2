"""Stacking: a scikit-learn meta-learner over the members' outputs, cross-fitted on the validation split."""

from __future__ import annotations

import importlib

import numpy as np
import torch
from sklearn.base import clone, is_classifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

from ..errors import ConfigError, InvalidInputError
from ..predictions import check_fit_labels
from ..tasks import Task
from .base import Combiner, probabilities
from .registry import COMBINERS

__all__ = ["Stacking"]


@COMBINERS.register("stacking")
class Stacking(Combiner):
    """Stacked generalization (Wolpert, 1992): a meta-learner trained on member outputs.

    Members were trained on the train split, so their validation outputs are out-of-sample; the meta-learner
    is fitted on those. Its honest score comes from K-fold cross-fitting on the validation split
    (`cv_score_`: each fold's meta-learner predicts samples it did not see); the final meta-learner is then
    fitted on the whole validation split, as scikit-learn's `StackingClassifier` does with prefit members.

    Args:
        meta_learner: a scikit-learn estimator, or its import path (`"sklearn.svm:SVC"`). Default:
            `LogisticRegression` (classification) or `Ridge` (regression).
        meta_params: arguments for the meta-learner when given by path.
        features: "proba" (member probabilities, first column dropped for binary tasks like scikit-learn)
            or "logit" (member logits). Regression always stacks values.
        passthrough: also give the meta-learner the original inputs (pass `X=` to fit and predict).
        cv: number of folds, or a list of (train, test) index pairs over the validation samples.
        seed: seed of the fold split.
    """

    uses_features = True

    def __init__(
        self,
        *,
        meta_learner=None,
        meta_params: dict | None = None,
        features: str = "proba",
        passthrough: bool = False,
        cv=5,
        seed: int = 0,
    ) -> None:
        self.meta_learner = meta_learner
        self.meta_params = meta_params
        self.features = features
        self.passthrough = passthrough
        self.cv = cv
        self.seed = seed

    def _meta_features(self, outputs: torch.Tensor, X: torch.Tensor | None) -> torch.Tensor:
        if outputs.ndim == 2:  # regression: [K, N] -> [N, K]
            columns = outputs.T
        else:
            values = probabilities(outputs) if self.features == "proba" else outputs
            if self.features == "proba" and values.shape[-1] == 2:
                values = values[..., 1:]  # the two columns sum to one; keep the positive class
            columns = values.permute(1, 0, 2).reshape(values.shape[1], -1)  # member-major, as hstack
        if self.passthrough:
            if X is None:
                raise InvalidInputError("stacking with passthrough=True needs the inputs: pass X= to fit and predict")
            columns = torch.cat([columns, torch.as_tensor(X, dtype=columns.dtype).reshape(len(columns), -1)], dim=1)
        return columns

    def _build_meta_learner(self, task: Task):
        spec = self.meta_learner
        if spec is None:
            return LogisticRegression(max_iter=2000) if task == "classification" else Ridge(alpha=1.0)
        if not isinstance(spec, str):
            return clone(spec)
        module_name, _, attr = spec.replace(":", ".").rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(
                f"stacking: cannot import meta_learner {spec!r}; give 'package.module:Class', e.g. "
                "'sklearn.linear_model:LogisticRegression'"
            ) from None
        return cls(**(self.meta_params or {}))

    def _fit(self, outputs: torch.Tensor, y: torch.Tensor, X=None) -> None:
        if self.features not in ("proba", "logit"):
            raise ConfigError(f"stacking: features must be 'proba' or 'logit', got {self.features!r}")
        classification = outputs.ndim == 3
        check_fit_labels(y, self.task_, "stacking")
        meta = self._build_meta_learner(self.task_)
        if classification and not is_classifier(meta):
            raise ConfigError(f"stacking: meta_learner {type(meta).__name__} is not a classifier")
        features = self._meta_features(outputs, X).numpy()
        target = y.numpy()
        folds = self.cv
        if isinstance(folds, int):
            splitter = StratifiedKFold if classification else KFold
            folds = splitter(folds, shuffle=True, random_state=self.seed)
        if classification:
            cv_proba = _full_proba(
                cross_val_predict(clone(meta), features, target, cv=folds, method="predict_proba"),
                np.unique(target),
                outputs.shape[-1],
            )
            picked = cv_proba[np.arange(len(target)), target]
            self.cv_score_ = {
                "accuracy": float((cv_proba.argmax(1) == target).mean()),
                "nll": float(-np.log(np.clip(picked, 1e-15, None)).mean()),
            }
        else:
            cv_pred = cross_val_predict(clone(meta), features, target, cv=folds)
            self.cv_score_ = {"rmse": float(np.sqrt(((cv_pred - target) ** 2).mean()))}
        self.meta_learner_ = meta.fit(features, target)
        self.linear_head_ = _linear_head(self.meta_learner_, features, outputs.shape[-1] if classification else 0)

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        features = self._meta_features(outputs, X)
        if self.linear_head_ is not None:
            return _apply_linear_head(self.linear_head_, features, outputs.ndim == 3)
        meta = self.meta_learner_
        if outputs.ndim == 2:
            return torch.as_tensor(meta.predict(features.numpy()), dtype=outputs.dtype)
        proba = _full_proba(meta.predict_proba(features.numpy()), meta.classes_, outputs.shape[-1])
        return torch.as_tensor(proba, dtype=outputs.dtype)


def _full_proba(proba: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Place a meta-learner's columns (classes seen in validation) into all `num_classes` columns."""
    full = np.zeros((len(proba), num_classes))
    full[:, np.asarray(classes, dtype=int)] = proba
    return full


def _linear_head(meta, features: np.ndarray, num_classes: int) -> dict | None:
    """The meta-learner as `softmax(F @ W.T + b)` (or `F @ W.T + b`) in torch, when it is one.

    Checked on the validation features, so the torch path is only used where it gives the same numbers;
    it is what lets `EnsembleModule` export a stacked ensemble with `torch.export`.
    """
    if not (hasattr(meta, "coef_") and hasattr(meta, "intercept_")):
        return None
    head = {
        "weight": torch.as_tensor(np.atleast_2d(meta.coef_), dtype=torch.float64),
        "bias": torch.as_tensor(np.atleast_1d(meta.intercept_), dtype=torch.float64),
    }
    if num_classes:
        head["classes"] = torch.as_tensor(np.asarray(meta.classes_, dtype=np.int64))
        head["num_classes"] = num_classes
        expected = _full_proba(meta.predict_proba(features), meta.classes_, num_classes)
    else:
        expected = meta.predict(features)
    torch_features = torch.as_tensor(features, dtype=torch.float64)
    got = _apply_linear_head(head, torch_features, bool(num_classes)).numpy()
    return head if np.allclose(got, expected, atol=1e-8) else None


def _apply_linear_head(head: dict, features: torch.Tensor, classification: bool) -> torch.Tensor:
    scores = features @ head["weight"].to(features.dtype).T + head["bias"].to(features.dtype)
    if not classification:
        return scores[:, 0]
    if scores.shape[1] == 1:  # binary: one decision value for the positive class
        scores = torch.cat([torch.zeros_like(scores), scores], dim=1)
    proba = torch.softmax(scores, dim=1)
    return features.new_zeros((features.shape[0], head["num_classes"])).index_copy(1, head["classes"], proba)
