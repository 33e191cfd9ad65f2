"""`GuardedModel`: any served model behind an input guard."""

from __future__ import annotations

import torch
from torch import nn

from ..ensemble.module import ON_REJECT, apply_guard
from ..errors import ConfigError
from .input_guard import InputGuard

__all__ = ["GuardedModel"]


class GuardedModel(nn.Module):
    """`model` whose every batch is screened by a fitted `guard` first (`EnsembleModule` takes a guard itself).

    Args:
        model: the served model (any `nn.Module`).
        guard: a fitted `InputGuard`.
        on_reject: "raise": an `InvalidInputError` naming the rejected rows and why; "abstain": the rejected
            rows of the output are NaN and the others are answered.

    Example:
        >>> served = GuardedModel(model, InputGuard([model]).fit(data.train, data.val), on_reject="abstain")
        >>> out = served(x); answered = ~out.isnan().any(-1)
    """

    def __init__(self, model: nn.Module, guard: InputGuard, *, on_reject: str = "raise") -> None:
        super().__init__()
        if on_reject not in ON_REJECT:
            raise ConfigError(f"on_reject must be one of {ON_REJECT}, got {on_reject!r}")
        guard._check_fitted()
        self.model, self.guard, self.on_reject = model, guard, on_reject

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_guard(self.guard, self.on_reject, x, self.model(x))
