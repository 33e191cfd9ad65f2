"""Greedy ensemble selection with replacement (Caruana et al., 2004)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .base import Combiner, best_member_or_fusion, probabilities, true_class_columns, weighted_mean
from .registry import COMBINERS

__all__ = ["GreedySelection"]

_METRICS = {"classification": ("nll", "accuracy"), "regression": ("mse",)}


@COMBINERS.register("greedy_selection")
class GreedySelection(Combiner):
    """Hill-climb on the validation score by adding members, with replacement, to an averaged ensemble.

    Caruana, Niculescu-Mizil, Crew and Ksikes, "Ensemble Selection from Libraries of Models" (ICML 2004):
    start from the `init_size` best members (sorted initialization), then repeatedly add the member that
    most improves the validation metric of the running average; the ensemble kept is the best prefix of that
    sequence. The result is a weighted average whose weights are the selection counts. With
    `bagging_rounds > 0`, selection is repeated on random subsets of `bag_fraction` of the members and the
    weights averaged, which the paper uses against overfitting the selection set.

    Never worse than the best member on validation: whatever the metric, the selected ensemble is scored
    against the most accurate member (lowest MSE for regression) on the selection set, and when that member
    is strictly better it is used alone (one-hot `weights_`). Selecting by NLL can need this: it favours
    calibrated members over an accurate but underconfident one.

    Args:
        metric: "nll" or "accuracy" (classification), "mse" (regression); default "nll" / "mse".
        n_iterations: additions after initialization.
        init_size: members in the sorted initialization.
        bagging_rounds: 0 for plain selection.
        bag_fraction: share of members available in each bagging round.
        seed: seed of the bagging subsets.
        fallback: use the best member alone when it beats the selected ensemble on validation.

    Fitted attributes:
        weights_: the weights used, `[K]`. fusion_weights_: the selection's (equal unless it fell back).
        choice_: "fusion" or the name of the member used alone. choice_reason_: why, with both figures.
    """

    def __init__(
        self,
        *,
        metric: str | None = None,
        n_iterations: int = 50,
        init_size: int = 1,
        bagging_rounds: int = 0,
        bag_fraction: float = 0.5,
        seed: int = 0,
        fallback: bool = True,
    ) -> None:
        self.metric = metric
        self.n_iterations = n_iterations
        self.init_size = init_size
        self.bagging_rounds = bagging_rounds
        self.bag_fraction = bag_fraction
        self.seed = seed
        self.fallback = fallback

    def _fit(self, outputs: torch.Tensor, y: torch.Tensor, X=None) -> None:
        metric = self.metric or ("nll" if self.task_ == "classification" else "mse")
        if metric not in _METRICS[self.task_]:
            raise ConfigError(f"greedy_selection: metric for {self.task_} must be one of {_METRICS[self.task_]}")
        if self.init_size < 1 or self.n_iterations < 0 or not 0 < self.bag_fraction <= 1:
            raise ConfigError("greedy_selection: need init_size >= 1, n_iterations >= 0 and 0 < bag_fraction <= 1")
        if not isinstance(self.fallback, bool):
            raise ConfigError(f"greedy_selection: fallback must be True or False, got {self.fallback!r}")
        values = probabilities(outputs).numpy() if outputs.ndim == 3 else outputs.numpy()
        target = y.numpy()
        num_members = len(values)
        if self.bagging_rounds == 0:
            counts = self._select(values, target, metric, np.arange(num_members))
            weights = counts / counts.sum()
        else:
            rng = np.random.default_rng(self.seed)
            bag_size = max(1, int(round(self.bag_fraction * num_members)))
            weights = np.zeros(num_members)
            for _ in range(self.bagging_rounds):
                counts = self._select(values, target, metric, rng.choice(num_members, bag_size, replace=False))
                weights += counts / counts.sum()
            weights = weights / self.bagging_rounds
        self.fusion_weights_ = torch.as_tensor(weights, dtype=torch.float64)
        self.weights_, self.choice_, self.choice_reason_ = best_member_or_fusion(
            self.fusion_weights_, outputs, y, self.member_names_, fallback=self.fallback
        )

    def _select(self, values: np.ndarray, y: np.ndarray, metric: str, pool: np.ndarray) -> np.ndarray:
        """Selection counts over all members, choosing only among `pool`."""
        candidates = values[pool]  # [P, N, C] or [P, N]
        scores = _losses(candidates, y, metric)
        counts = np.zeros(len(values))
        total = np.zeros_like(values[0])
        for index in np.argsort(scores, kind="stable")[: self.init_size]:
            counts[pool[index]] += 1
            total += candidates[index]
        best_loss, best_counts = _losses(total[None] / counts.sum(), y, metric)[0], counts.copy()
        for _ in range(self.n_iterations):
            size = counts.sum()
            losses = _losses((total[None] + candidates) / (size + 1), y, metric)
            index = int(np.argmin(losses))  # ties: the lower index
            counts[pool[index]] += 1
            total += candidates[index]
            if losses[index] < best_loss:
                best_loss, best_counts = losses[index], counts.copy()
        return best_counts

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        return weighted_mean(self.weights_, outputs)


def _losses(values: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    """The loss of each candidate average: `[M, N, C]` probabilities or `[M, N]` values -> `[M]`."""
    if metric == "nll":
        return -np.log(np.clip(true_class_columns(values, y), 1e-15, None)).mean(axis=1)
    if metric == "accuracy":
        return -(values.argmax(axis=-1) == y).mean(axis=1)
    return ((values - y) ** 2).mean(axis=1)
