"""A weighted average with weights fitted on validation data."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize, nnls
from scipy.special import softmax

from ..errors import ConfigError
from .base import Combiner, best_member_or_fusion, probabilities, true_class_columns, weighted_mean
from .registry import COMBINERS

__all__ = ["WeightedAverage"]


@COMBINERS.register("weighted")
class WeightedAverage(Combiner):
    """Weighted mean of member probabilities (or values), weights fitted on the validation split.

    Classification: the weights are a softmax of free parameters (so they are positive and sum to one),
    chosen to minimize the validation NLL of the mixture with scipy's L-BFGS and an exact gradient.
    Regression: non-negative least squares (scipy `nnls`), the "super learner" of van der Laan et al. (2007),
    normalized to sum to one unless `normalize=False`.

    Never worse than the best member on validation: the fitted fusion is scored against the most accurate
    member (lowest MSE for regression) on the same validation predictions, and when that member is strictly
    better it is used alone (one-hot `weights_`). An NLL fit can need this: it favours calibrated members, so
    an accurate but underconfident member (a random forest) can get a small weight and the mixture lose
    accuracy while its NLL drops.

    Args:
        shrinkage: in [0, 1]; the final weights are `(1 - shrinkage) * fitted + shrinkage / K`, which guards
            against overfitting a small validation set.
        normalize: regression only: rescale the NNLS weights to sum to one.
        fallback: use the best member alone when it beats the fitted fusion on validation.

    Fitted attributes:
        weights_: the weights used, `[K]`. fusion_weights_: the fitted ones (equal unless it fell back).
        choice_: "fusion" or the name of the member used alone. choice_reason_: why, with both figures.

    Example:
        >>> combiner = make_combiner("weighted").fit(val_preds)
        >>> combiner.choice_reason_
        "member 'random_forest': validation accuracy 0.7625 > fusion 0.6637"
    """

    def __init__(self, *, shrinkage: float = 0.0, normalize: bool = True, fallback: bool = True) -> None:
        self.shrinkage = shrinkage
        self.normalize = normalize
        self.fallback = fallback

    def _fit(self, outputs: torch.Tensor, y: torch.Tensor, X=None) -> None:
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ConfigError(f"weighted: shrinkage must be in [0, 1], got {self.shrinkage}")
        if not isinstance(self.fallback, bool):
            raise ConfigError(f"weighted: fallback must be True or False, got {self.fallback!r}")
        num_members = outputs.shape[0]
        if outputs.ndim == 3:
            weights = _nll_weights(true_class_columns(probabilities(outputs).numpy(), y.numpy()))
        else:
            weights, _ = nnls(outputs.numpy().T, y.double().numpy())
            if weights.sum() == 0:
                weights = np.full(num_members, 1.0 / num_members)
            elif self.normalize:
                weights = weights / weights.sum()
        weights = (1 - self.shrinkage) * weights + self.shrinkage / num_members
        self.fusion_weights_ = torch.as_tensor(weights, dtype=torch.float64)
        self.weights_, self.choice_, self.choice_reason_ = best_member_or_fusion(
            self.fusion_weights_, outputs, y, self.member_names_, fallback=self.fallback
        )

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        return weighted_mean(self.weights_, outputs)


def _nll_weights(true_proba: np.ndarray) -> np.ndarray:
    """Mixture weights minimizing -mean_n log(sum_k w_k q_kn), q `[K, N]` the members' true-class probabilities."""
    tiny = np.finfo(np.float64).tiny

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = softmax(theta)
        mixture = np.maximum(w @ true_proba, tiny)  # [N]
        grad_w = -(true_proba / mixture).mean(axis=1)  # dNLL/dw_k
        grad_theta = w * (grad_w - w @ grad_w)  # through the softmax
        return float(-np.log(mixture).mean()), grad_theta

    result = minimize(objective, np.zeros(true_proba.shape[0]), jac=True, method="L-BFGS-B")
    return softmax(result.x)
