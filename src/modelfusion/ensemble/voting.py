"""Voting: soft (weighted mean of probabilities) and hard (weighted majority), one implementation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from .base import Combiner, probabilities
from .registry import COMBINERS

__all__ = ["Voting", "SoftVote", "HardVote"]

# Hard votes: each class's probability is its weighted vote share; this much of the mean probability is
# added so that ties go to the class with the larger summed probability, and no other order changes.
_TIE_BREAK = 1e-6


class Voting(Combiner):
    """Weighted voting with fixed (not fitted) member weights, as scikit-learn's `VotingClassifier`.

    `voting="soft"` averages probabilities; `voting="hard"` counts each member's predicted class, ties
    broken by summed probability. Hard voting's probabilities are vote shares, so its NLL says little.
    """

    name = "voting"
    tasks = ("classification",)

    def __init__(self, *, voting: str = "soft", weights: Sequence[float] | None = None) -> None:
        self.voting = voting
        self.weights = weights

    @property
    def estimates_probabilities(self) -> bool:
        return self.voting == "soft"

    def _fit(self, outputs: torch.Tensor, y=None, X=None) -> None:
        if self.voting not in ("soft", "hard"):
            raise ConfigError(f"{self.name}: voting must be 'soft' or 'hard', got {self.voting!r}")
        num_members = outputs.shape[0]
        weights = torch.ones(num_members) if self.weights is None else torch.as_tensor(self.weights)
        if weights.shape != (num_members,):
            raise ConfigError(f"{self.name}: got {weights.numel()} weights for {num_members} members")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(f"{self.name}: weights must be non-negative with a positive sum, got {weights.tolist()}")
        self.weights_ = (weights / weights.sum()).double()

    def _fuse(self, outputs: torch.Tensor, X=None) -> torch.Tensor:
        weights = self.weights_.to(outputs.dtype)
        soft = torch.einsum("k,knc->nc", weights, probabilities(outputs))
        if self.voting == "soft":
            return soft
        votes = torch.nn.functional.one_hot(outputs.argmax(dim=-1), outputs.shape[-1]).to(outputs.dtype)
        shares = torch.einsum("k,knc->nc", weights, votes) + _TIE_BREAK * soft
        return shares / shares.sum(dim=-1, keepdim=True)


@COMBINERS.register("soft_vote")
class SoftVote(Voting):
    """Soft voting: the weighted mean of probabilities (`weights` fixed by the user, uniform by default)."""

    def __init__(self, *, weights: Sequence[float] | None = None) -> None:
        super().__init__(voting="soft", weights=weights)


@COMBINERS.register("hard_vote")
class HardVote(Voting):
    """Hard voting: the weighted majority class, ties broken by summed probability."""

    def __init__(self, *, weights: Sequence[float] | None = None) -> None:
        super().__init__(voting="hard", weights=weights)
