"""Averaging combiners: nothing to fit (`mean_logit` checks its members for overconfidence)."""

from __future__ import annotations

import math
import warnings

import torch

from ..errors import ConfigError, OverconfidenceWarning
from .base import Combiner, probabilities
from .registry import COMBINERS

__all__ = ["Mean", "MeanLogit", "Median"]


@COMBINERS.register("mean")
class Mean(Combiner):
    """Mean of the members' probabilities (classification) or values (regression).

    The plain ensemble average, as in Deep Ensembles (Lakshminarayanan et al., 2017).
    """

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        return probabilities(outputs).mean(dim=0) if outputs.ndim == 3 else outputs.mean(dim=0)


@COMBINERS.register("mean_logit")
class MeanLogit(Combiner):
    """Softmax of the mean of the members' log-probabilities, each floored at `log(floor)`.

    Without the floor this is the softmax of the mean logit, the normalized geometric mean of the
    probabilities: log-softmax only shifts each member's logits by a per-sample constant, which the final
    softmax cancels (registered as `geometric_mean` too). It trusts confident members more than `mean` does,
    which goes wrong when a member gives a class zero probability: a random forest's log(1e-12) = -27.6 then
    outweighs every other member. The floor bounds what one member can veto; probabilities above it are
    untouched, so for members that never go below it this is exactly the normalized geometric mean.

    `fit` warns (`OverconfidenceWarning`) about members that give the true class of validation samples a
    probability below `floor`, and records their counts in `overconfident_`.

    Args:
        floor: in (0, 1); each member's probabilities are floored at it before the geometric mean.

    Example:
        >>> combiner = make_combiner("mean_logit", floor=1e-3).fit(val_preds)
        >>> combiner.overconfident_
        {'random_forest': 37}
    """

    tasks = ("classification",)

    def __init__(self, *, floor: float = 1e-4) -> None:
        self.floor = floor

    def _log_floor(self) -> float:
        ok = isinstance(self.floor, int | float) and not isinstance(self.floor, bool) and 0 < self.floor < 1
        if not ok:
            raise ConfigError(f"mean_logit: floor must be in (0, 1), got {self.floor!r}; the default is 1e-4")
        return math.log(self.floor)

    def _fit(self, outputs: torch.Tensor, y: torch.Tensor, X=None) -> None:
        log_floor = self._log_floor()
        num_members, num_samples = outputs.shape[:2]
        true_log_proba = torch.log_softmax(outputs, dim=-1).gather(-1, y.view(1, -1, 1).expand(num_members, -1, 1))
        counts = (true_log_proba[..., 0] < log_floor).sum(dim=1)  # [K]
        self.overconfident_ = {
            name: int(count) for name, count in zip(self.member_names_, counts.tolist(), strict=True) if count
        }
        # One confidently wrong sample in hundreds is what a good network does; warn when it is a habit.
        habitual = {name: count for name, count in self.overconfident_.items() if count >= 0.01 * num_samples}
        if habitual:
            message = _overconfidence_message(habitual, num_samples, self.floor)
            warnings.warn(message, OverconfidenceWarning, stacklevel=4)  # 4: the caller of fit

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        log_proba = torch.log_softmax(outputs, dim=-1).clamp_min(self._log_floor())  # [K, N, C]
        return torch.softmax(log_proba.mean(dim=0), dim=-1)


def _overconfidence_message(counts: dict[str, int], num_samples: int, floor: float) -> str:
    below = f"the true class probability < {floor:g}"
    if len(counts) == 1:
        [(name, count)] = counts.items()
        what = f"member {name!r} gives {below} on {count} of {num_samples} validation samples (overconfident); its"
    else:
        listed = ", ".join(f"{name!r} on {count}" for name, count in counts.items())
        what = f"members give {below} on validation samples (overconfident): {listed} of {num_samples}; their"
    return f"mean_logit: {what} log-probabilities are floored at log({floor:g})"


COMBINERS.alias("geometric_mean", "mean_logit")


@COMBINERS.register("median")
class Median(Combiner):
    """Median of the members' values (regression): robust to one member that is far off."""

    tasks = ("regression",)

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        # quantile, unlike torch.median, averages the two middle values when K is even.
        return torch.quantile(outputs, 0.5, dim=0)
