"""The combiner contract (scikit-learn's estimator contract over `Predictions`)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import IncompatibleModelsError, InvalidInputError, NotFittedError
from ..predictions import Predictions

__all__ = ["Combiner"]


class Combiner:
    """Fuses the outputs of K members into one prediction.

    `__init__` only stores arguments; `fit(preds_val)` validates and learns (attributes ending in `_`);
    `predict_proba(preds)` / `predict(preds)` apply it to predictions of the same members on any split.
    Subclasses set `name` and `tasks` and implement `_fit` (optional) and `_combine`.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")

    def fit(self, preds: Predictions, y: torch.Tensor | None = None) -> Combiner:
        """Learn from validation predictions; `y` defaults to `preds.labels`."""
        if preds.task not in self.tasks:
            raise InvalidInputError(f"combiner {self.name!r} supports {self.tasks}, not {preds.task}")
        y = preds.labels if y is None else torch.as_tensor(y)
        if y is not None and len(y) != preds.num_samples:
            raise InvalidInputError(f"got {len(y)} targets for {preds.num_samples} samples")
        self.member_names_ = preds.member_names
        self.task_ = preds.task
        self.classes_ = preds.classes
        self._fit(preds, y)
        return self

    def _fit(self, preds: Predictions, y: torch.Tensor | None) -> None:
        """Learn parameters; combiners with nothing to learn keep this default."""

    def _check_fitted(self, preds: Predictions) -> None:
        if not hasattr(self, "member_names_"):
            raise NotFittedError(f"combiner {self.name!r} is not fitted yet; call fit(validation_predictions) first")
        if preds.member_names != self.member_names_:
            raise IncompatibleModelsError(
                f"combiner {self.name!r} was fitted on members {list(self.member_names_)} but got "
                f"{list(preds.member_names)}; predict with the same members in the same order"
            )

    def _combine(self, preds: Predictions) -> torch.Tensor:
        raise NotImplementedError

    def predict_proba(self, preds: Predictions) -> torch.Tensor:
        """Fused class probabilities `[N, C]`."""
        self._check_fitted(preds)
        if self.task_ != "classification":
            raise InvalidInputError(f"combiner {self.name!r} was fitted for regression; use predict()")
        return self._combine(preds)

    def predict(self, preds: Predictions) -> torch.Tensor:
        """Fused labels `[N]` (classification) or values `[N]` (regression)."""
        self._check_fitted(preds)
        fused = self._combine(preds)
        return fused.argmax(dim=1) if self.task_ == "classification" else fused

    def fuse(self, preds: Predictions) -> torch.Tensor:
        """What `evaluate` scores: probabilities `[N, C]` (classification) or values `[N]` (regression)."""
        self._check_fitted(preds)
        return self._combine(preds)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"
