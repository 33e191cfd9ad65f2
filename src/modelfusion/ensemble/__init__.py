"""Output fusion: combiners that fuse members' `Predictions`, registered by name."""

from __future__ import annotations

from ..registry import Registry
from .base import Combiner
from .mean import Mean

__all__ = ["COMBINERS", "Combiner", "make_combiner", "Mean"]

COMBINERS: Registry[type[Combiner]] = Registry("combiner")
for _cls in (Mean,):
    COMBINERS.register(_cls.name)(_cls)


def make_combiner(name: str, **params) -> Combiner:
    """Build the combiner registered as `name` with `params`; an unknown name lists the valid ones."""
    return COMBINERS[name](**params)
