"""Averaging combiners."""

from __future__ import annotations

import torch

from ..predictions import Predictions
from .base import Combiner

__all__ = ["Mean"]


class Mean(Combiner):
    """Mean of the members' probabilities (classification) or values (regression).

    The plain ensemble average (e.g. Lakshminarayanan et al., 2017, "Deep Ensembles"): nothing to fit.
    """

    name = "mean"

    def _combine(self, preds: Predictions) -> torch.Tensor:
        if preds.task == "classification":
            return preds.probabilities().double().mean(dim=0).float()
        return preds.outputs.double().mean(dim=0).float()
