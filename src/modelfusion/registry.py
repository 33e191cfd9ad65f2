"""One registry type shared by every family (datasets, combiners, merge methods, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A name -> object mapping whose lookups fail with the list of valid names.

    Example:
        >>> DATASETS = Registry("dataset")
        >>> @DATASETS.register("digits")
        ... def _digits(seed): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> T:
        """Remove `name` (and its aliases) and return what it held: for plugins and tests that register for a
        while."""
        obj = self[name]
        del self._items[self._aliases.get(name, name)]
        self._aliases = {a: n for a, n in self._aliases.items() if n in self._items}
        return obj

    def alias(self, alias: str, name: str) -> None:
        """Let `alias` look up `name`: for two names of one method. Aliases stay out of `names()`."""
        if name not in self._items or alias in self._items or alias in self._aliases:
            raise ValueError(f"cannot alias {alias!r} to {name!r} in the {self.kind} registry")
        self._aliases[alias] = name

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[self._aliases.get(name, name)]
        except KeyError:
            valid = ", ".join(sorted([*self._items, *self._aliases]))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)
