"""Averaging combiners: nothing to fit."""

from __future__ import annotations

import torch

from .base import Combiner, probabilities

__all__ = ["Mean", "MeanLogit", "Median"]


class Mean(Combiner):
    """Mean of the members' probabilities (classification) or values (regression).

    The plain ensemble average, as in Deep Ensembles (Lakshminarayanan et al., 2017).
    """

    name = "mean"

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        return probabilities(outputs).mean(dim=0) if outputs.ndim == 3 else outputs.mean(dim=0)


class MeanLogit(Combiner):
    """Softmax of the mean of the members' logits.

    This is also the normalized geometric mean of the probabilities: log-softmax only shifts each member's
    logits by a per-sample constant, which the final softmax cancels (registered as `geometric_mean` too).
    It trusts confident members more than `mean` does.
    """

    name = "mean_logit"
    tasks = ("classification",)

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        return torch.softmax(outputs.mean(dim=0), dim=-1)


class Median(Combiner):
    """Median of the members' values (regression): robust to one member that is far off."""

    name = "median"
    tasks = ("regression",)

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        # quantile, unlike torch.median, averages the two middle values when K is even.
        return torch.quantile(outputs, 0.5, dim=0)
