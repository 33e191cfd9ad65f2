"""The combiner registry: every combiner class registers itself here with `@COMBINERS.register(name)`."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..registry import Registry
from ..tasks import Task
from .base import Combiner

__all__ = ["COMBINERS", "make_combiner", "combiners_for"]


class _CombinerRegistry(Registry[type[Combiner]]):
    """A registry of combiner classes that also gives each class its registered name (`cls.name`), the name
    its saved files and results carry."""

    def register(self, name: str) -> Callable[[type[Combiner]], type[Combiner]]:
        add = super().register(name)

        def decorator(cls: type[Combiner]) -> type[Combiner]:
            if not (isinstance(cls, type) and issubclass(cls, Combiner)):
                raise TypeError(f"combiner {name!r}: only Combiner subclasses can be registered, got {cls!r}")
            cls.name = name
            return add(cls)

        return decorator


COMBINERS = _CombinerRegistry("combiner")


def make_combiner(name: str, **params) -> Combiner:
    """Build the combiner registered as `name` with `params`; an unknown name lists the valid ones.

    Example:
        >>> combiner = make_combiner("weighted", shrinkage=0.1).fit(val_preds)
        >>> proba = combiner.predict_proba(test_preds)
    """
    cls = COMBINERS[name]
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"combiner {name!r}: bad parameters {params} ({err})") from None


def combiners_for(task: Task) -> list[str]:
    """Names of every combiner that supports `task`."""
    return [name for name in COMBINERS.names() if task in COMBINERS[name].tasks]
