"""Model soups (Wortsman et al., 2022): average the weights of fine-tunes of one pretrained model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from ..errors import InvalidInputError
from .state_dicts import merge_state_dicts

__all__ = ["uniform_soup", "greedy_soup", "GreedySoup"]


def _soup(models: Sequence[nn.Module]) -> nn.Module:
    soup = copy.deepcopy(models[0])
    soup.load_state_dict(merge_state_dicts(models, method="linear"))
    return soup.eval()


def uniform_soup(models: Sequence[nn.Module]) -> nn.Module:
    """A new model whose weights are the mean of `models`' weights (the models are left as they are)."""
    if not models:
        raise InvalidInputError("a soup needs at least one model")
    return _soup(models)


@dataclass
class GreedySoup:
    """The greedy soup, which ingredients it kept (indices into the models given), and the scores seen."""

    model: nn.Module
    ingredients: list[int]
    individual_scores: list[float]
    history: list[dict] = field(default_factory=list)


def greedy_soup(models: Sequence[nn.Module], score: Callable[[nn.Module], float]) -> GreedySoup:
    """Greedy soup: add models in order of their own validation score; keep each one only if the soup's
    validation score does not drop.

    Args:
        models: fine-tunes of one pretrained model (same architecture).
        score: higher is better, computed on validation data (e.g. accuracy); never on test data.

    Example:
        >>> result = greedy_soup(finetunes, lambda m: accuracy(m, data.val))
        >>> result.ingredients  # e.g. [3, 0, 4]
    """
    if not models:
        raise InvalidInputError("a soup needs at least one model")
    individual = [float(score(m.eval())) for m in models]
    order = sorted(range(len(models)), key=lambda i: -individual[i])
    kept = [order[0]]
    best = individual[order[0]]
    history = [{"candidate": order[0], "score": best, "kept": True}]
    for index in order[1:]:
        candidate = _soup([models[i] for i in [*kept, index]])
        value = float(score(candidate))
        keep = value >= best
        history.append({"candidate": index, "score": value, "kept": keep})
        if keep:
            kept.append(index)
            best = value
    return GreedySoup(_soup([models[i] for i in kept]), kept, individual, history)
