"""The combiner contract (scikit-learn's estimator contract over `Predictions`)."""

from __future__ import annotations

import inspect
from typing import ClassVar

import numpy as np
import torch

from .._atomic import jsonable
from .._checks import checked
from ..errors import IncompatibleModelsError, InvalidInputError, NotFittedError
from ..predictions import Predictions, check_fit_split
from ..tasks import TASKS, Task

__all__ = ["Combiner", "best_member_or_fusion"]


class Combiner:
    """Fuses the outputs of K members into one prediction.

    `__init__` only stores arguments; `fit(preds_val)` validates and learns (attributes ending in `_`);
    `predict_proba(preds)` / `predict(preds)` apply it to predictions of the same members on any split.

    Subclasses set `name` and `tasks`, implement `_fit` when they learn something, and `_fuse`, which maps
    member outputs (logits `[K, N, C]` or values `[K, N]`) to probabilities `[N, C]` or values `[N]` with torch
    operations, so that `EnsembleModule` can run (and `torch.export` trace) the same code.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[Task, ...]] = TASKS
    uses_features: ClassVar[bool] = False  # True when fit/predict may also take the original inputs X

    @property
    def estimates_probabilities(self) -> bool:
        """Whether the fused output is a probability estimate, so that its NLL means something (vote shares
        are not: choosing by NLL leaves such combiners out)."""
        return True

    # -- fitting -------------------------------------------------------------------------------------
    @checked
    def fit(self, preds: Predictions, y: torch.Tensor | None = None, *, X: torch.Tensor | None = None) -> Combiner:
        """Learn from validation predictions; `y` defaults to `preds.labels`. Predictions of the test split are
        refused (`LeakageError`): a combiner fitted on them is scored on the labels it learned from."""
        check_fit_split(preds, f"combiner {self.name!r}")
        if preds.task not in self.tasks:
            raise InvalidInputError(
                f"combiner {self.name!r} supports {' and '.join(self.tasks)}, not {preds.task}; pick another method"
            )
        y = preds.labels if y is None else torch.as_tensor(y)
        if y is None:
            raise InvalidInputError(f"combiner {self.name!r}: the validation predictions have no labels to fit on")
        if len(y) != preds.num_samples:
            raise InvalidInputError(f"got {len(y)} targets for {preds.num_samples} samples")
        return self._fit_outputs(preds.outputs.double(), y, X, preds.member_names, preds.task, preds.classes)

    def _fit_outputs(self, outputs, y, X, member_names, task, classes) -> Combiner:
        """`fit` on raw outputs, for combiners that fit another combiner on transformed outputs."""
        self.member_names_ = tuple(member_names)
        self.task_ = task
        self.classes_ = classes
        self._fit(outputs, y, X)
        return self

    def _fit(self, outputs: torch.Tensor, y: torch.Tensor, X: torch.Tensor | None) -> None:
        """Learn parameters from validation outputs; combiners with nothing to learn keep this default."""

    # -- predicting ----------------------------------------------------------------------------------
    def _fuse(self, outputs: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _check_fitted(self, preds: Predictions) -> None:
        if not hasattr(self, "member_names_"):
            raise NotFittedError(f"combiner {self.name!r} is not fitted yet; call fit(validation_predictions) first")
        if preds.member_names != self.member_names_:
            raise IncompatibleModelsError(
                f"combiner {self.name!r} was fitted on members {list(self.member_names_)} but got "
                f"{list(preds.member_names)}; predict with the same members in the same order"
            )

    def members_used(self) -> list[str]:
        """The members this fitted combiner runs: those with a non-zero weight when it learned one weight per
        member (a selection, or the best member alone after a fallback), else all of them."""
        if not hasattr(self, "member_names_"):
            raise NotFittedError(f"combiner {self.name!r} is not fitted yet; call fit(validation_predictions) first")
        weights = getattr(self, "weights_", None)
        if isinstance(weights, torch.Tensor) and weights.ndim == 1 and len(weights) == len(self.member_names_):
            return [name for name, w in zip(self.member_names_, weights.tolist(), strict=True) if w != 0]
        return list(self.member_names_)

    def fuse(self, preds: Predictions, *, X: torch.Tensor | None = None) -> torch.Tensor:
        """What `evaluate` scores: probabilities `[N, C]` (classification) or values `[N]` (regression)."""
        self._check_fitted(preds)
        return self._fuse(preds.outputs.double(), X).float()

    @checked
    def predict_proba(self, preds: Predictions, *, X: torch.Tensor | None = None) -> torch.Tensor:
        """Fused class probabilities `[N, C]`."""
        if getattr(self, "task_", None) == "regression":
            raise InvalidInputError(f"combiner {self.name!r} was fitted for regression; use predict()")
        return self.fuse(preds, X=X)

    @checked
    def predict(self, preds: Predictions, *, X: torch.Tensor | None = None) -> torch.Tensor:
        """Fused labels `[N]` (classification) or values `[N]` (regression)."""
        fused = self.fuse(preds, X=X)
        return fused.argmax(dim=1) if self.task_ == "classification" else fused

    # -- parameters ----------------------------------------------------------------------------------
    def get_params(self) -> dict:
        """The constructor arguments, as stored by `__init__` (scikit-learn's convention)."""
        parameters = inspect.signature(type(self).__init__).parameters.values()
        named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return {p.name: getattr(self, p.name) for p in parameters if p.kind in named and p.name != "self"}

    def fitted_state(self) -> dict:
        """Every fitted attribute (name ending in `_`)."""
        if not hasattr(self, "member_names_"):
            raise NotFittedError(f"combiner {self.name!r} is not fitted yet; nothing to save")
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def learned_state(self) -> dict:
        """What fitting learned: `fitted_state()` less what every combiner records about its inputs (member
        names, task, classes)."""
        inputs = ("member_names_", "task_", "classes_")
        return {k: v for k, v in self.fitted_state().items() if k not in inputs}

    def describe(self) -> dict:
        """JSON-able: the class, the constructor arguments and the learned state (a nested combiner, such as
        temperature's base, described the same way; tensors as lists; estimators by their repr)."""
        learned = {
            name.rstrip("_"): value.describe() if isinstance(value, Combiner) else jsonable(value)
            for name, value in self.learned_state().items()
        }
        return {"class": type(self).__name__, "params": jsonable(self.get_params()), **learned}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Softmax over classes of member logits `[K, N, C]`."""
    return torch.softmax(outputs, dim=-1)


def true_class_columns(values: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`values[..., n, y_n]` for every leading index: `[..., N, C]` -> `[..., N]`."""
    return np.take_along_axis(values, y.reshape(*([1] * (values.ndim - 2)), -1, 1), axis=-1)[..., 0]


def weighted_mean(weights: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Weighted mean over members of probabilities (logits `[K, N, C]` -> `[N, C]`) or values (`[K, N]` -> `[N]`)."""
    weights = weights.to(outputs.dtype)
    if outputs.ndim == 3:
        return torch.einsum("k,knc->nc", weights, probabilities(outputs))
    return weights @ outputs


def best_member_or_fusion(
    weights: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor, member_names: tuple[str, ...], *, fallback: bool
) -> tuple[torch.Tensor, str, str]:
    """The weights to use: the fitted `weights`, or one-hot on the best member when it beats their fusion.

    Both are scored on the validation outputs the weights were fitted on. The best member has the highest
    accuracy (ties: the lower NLL, then the first) or the lowest MSE; it replaces the fusion only when its
    accuracy is strictly higher (its MSE strictly lower) and `fallback` is on. NLL cannot decide: the
    NLL-optimal mixture never has a higher validation NLL than any member, even when it is less accurate.

    Returns:
        (weights `[K]`, choice: the member's name or "fusion", reason: one line quoting both figures).
    """
    fused = weighted_mean(weights, outputs)  # [N, C] or [N]
    if outputs.ndim == 3:
        log_proba = torch.log_softmax(outputs, dim=-1)  # [K, N, C]
        member_scores = (log_proba.argmax(dim=-1) == y).double().mean(dim=1)  # accuracy, [K]
        member_nll = -log_proba.gather(-1, y.view(1, -1, 1).expand(len(outputs), -1, 1)).mean(dim=(1, 2))  # [K]
        best = min(range(len(outputs)), key=lambda k: (-member_scores[k].item(), member_nll[k].item(), k))
        fusion_score = (fused.argmax(dim=-1) == y).double().mean().item()
        member_wins = member_scores[best].item() > fusion_score
        metric, fmt, win, keep = "accuracy", ".4f", ">", ">="
    else:
        member_scores = ((outputs - y.to(outputs.dtype)) ** 2).mean(dim=1)  # MSE, [K]
        best = int(torch.argmin(member_scores))  # ties: the first
        fusion_score = ((fused - y.to(fused.dtype)) ** 2).mean().item()
        member_wins = member_scores[best].item() < fusion_score
        metric, fmt, win, keep = "MSE", ".6g", "<", "<="
    member, member_score = member_names[best], member_scores[best].item()
    if member_wins and fallback:
        one_hot = torch.zeros(len(outputs), dtype=torch.float64)
        one_hot[best] = 1.0
        reason = f"member {member!r}: validation {metric} {member_score:{fmt}} {win} fusion {fusion_score:{fmt}}"
        return one_hot, member, reason
    relation = f"best member {member!r} {member_score:{fmt}}"
    if member_wins:
        reason = f"fusion (fallback off): validation {metric} {fusion_score:{fmt}}, worse than {relation}"
    else:
        reason = f"fusion: validation {metric} {fusion_score:{fmt}} {keep} {relation}"
    return weights.double().clone(), "fusion", reason  # a copy: safetensors refuses tensors sharing memory
