"""Temperature scaling (Guo et al., 2017) of each member and of the fused output."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from ..errors import ConfigError
from .base import Combiner
from .registry import COMBINERS

__all__ = ["TemperatureScaling", "fit_temperature"]

# log T is searched in [-5, 5]: T from 0.007 to 148, far beyond any useful setting.
_LOG_T_BOUNDS = (-5.0, 5.0)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimizing the NLL of `softmax(logits / T)` on `(logits [N, C], y [N])`."""

    def nll(log_t: float) -> float:
        scaled = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-scaled[np.arange(len(y)), y].mean())

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


@COMBINERS.register("temperature")
class TemperatureScaling(Combiner):
    """Calibrate members, fuse them with `base`, then calibrate the fused output; every T fitted on validation.

    Dividing logits by one scalar T changes confidence but never the predicted class, so accuracy is that of
    the base combiner and the NLL/ECE improve (Guo et al., "On Calibration of Modern Neural Networks", 2017).

    Args:
        base: name of the combiner that fuses the calibrated members (any classification combiner).
        base_params: its arguments.
        per_member: fit one T per member before fusing.
        fused: fit one T on the fused output.
    """

    tasks = ("classification",)

    def __init__(
        self, *, base: str = "mean", base_params: dict | None = None, per_member: bool = True, fused: bool = True
    ) -> None:
        self.base = base
        self.base_params = base_params
        self.per_member = per_member
        self.fused = fused

    def _fit(self, outputs: torch.Tensor, y: torch.Tensor, X=None) -> None:
        if self.base == self.name:
            raise ConfigError("temperature: base cannot be 'temperature' itself")
        target = y.numpy()
        num_members = outputs.shape[0]
        self.member_temperatures_ = torch.tensor(
            [fit_temperature(outputs[k].numpy(), target) for k in range(num_members)]
            if self.per_member
            else [1.0] * num_members,
            dtype=torch.float64,
        )
        calibrated = outputs / self.member_temperatures_[:, None, None]
        base = COMBINERS[self.base](**(self.base_params or {}))
        self.base_ = base._fit_outputs(calibrated, y, X, self.member_names_, self.task_, self.classes_)
        fused_log_proba = torch.log(base._fuse(calibrated, X).clamp_min(1e-300)).numpy()
        self.fused_temperature_ = fit_temperature(fused_log_proba, target) if self.fused else 1.0

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        calibrated = outputs / self.member_temperatures_.to(outputs.dtype)[:, None, None]
        fused = self.base_._fuse(calibrated, X)
        if not self.fused:
            return fused
        return torch.softmax(torch.log(fused.clamp_min(torch.finfo(fused.dtype).tiny)) / self.fused_temperature_, -1)
