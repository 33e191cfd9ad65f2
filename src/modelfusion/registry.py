"""One registry type shared by every family (datasets, combiners, merge methods, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cached_property
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A name -> object mapping whose lookups fail with the list of valid names.

    With `plugins` (an entry-point group), installed packages may provide names without anything importing
    them first: the entry point `name = "package.module"` (or `"package.module:object"`) names the module that
    registers `name`, imported the first time `name` is looked up. So a family registers its own things in a
    registry of a lower floor (the "spliced" model factory lives in `features`, `MODELS` in `models`) and the
    lower floor never imports the higher one.

    Example:
        >>> DATASETS = Registry("dataset")
        >>> @DATASETS.register("digits")
        ... def _digits(seed): ...
    """

    def __init__(self, kind: str, *, plugins: str | None = None) -> None:
        self.kind = kind
        self.plugins = plugins
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    @cached_property
    def _entry_points(self) -> dict[str, EntryPoint]:
        """The installed entry points of `plugins`, by name (read once, when first needed)."""
        return {ep.name: ep for ep in entry_points(group=self.plugins)} if self.plugins else {}

    def _load(self, name: str) -> None:
        """Import the module an entry point names for `name`; register what it names if importing did not."""
        entry_point = self._entry_points.get(name)
        if entry_point is None or name in self._items:
            return
        loaded = entry_point.load()
        if name not in self._items and entry_point.attr:
            self._items[name] = loaded

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
        name = self._aliases.get(name, name)
        if name not in self._items and isinstance(name, str):
            self._load(name)
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted({*self.names(), *self._aliases}))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases or name in self._entry_points

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def names(self) -> list[str]:
        """Every name, those of plugins not imported yet included."""
        return sorted({*self._items, *self._entry_points})

    def registered(self) -> dict[str, T]:
        """The names registered so far and what they hold, without importing any plugin."""
        return dict(self._items)
