"""Old spellings that keep working for a while, each with a `DeprecationWarning` that names the new one."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import TypeVar

from .errors import ArgumentError

F = TypeVar("F", bound=Callable)

__all__ = ["deprecated", "keyword_only"]


def deprecated(old: str, new: str) -> None:
    """Warn, from the caller's caller, that `old` is deprecated in favour of `new`."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def keyword_only(*names: str) -> Callable[[F], F]:
    """Let `names` (keyword-only parameters of the decorated function, in this order) still be passed
    positionally after its positional parameters, with a `DeprecationWarning`: for arguments that became
    keyword-only (`compress(model, "int8")` -> `compress(model, method="int8")`)."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in signature.parameters.values())

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if len(args) > positional:
                extra = args[positional:]
                if len(extra) > len(names):
                    raise ArgumentError(f"{fn.__name__}() takes {positional} positional arguments, got {len(args)}")
                moved = names[: len(extra)]
                given = ", ".join(f"{name}=..." for name in moved)
                warnings.warn(
                    f"passing {', '.join(moved)} to {fn.__name__}() by position is deprecated; pass {given}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                clash = [name for name in moved if name in kwargs]
                if clash:
                    raise ArgumentError(f"{fn.__name__}() got multiple values for {', '.join(clash)}")
                kwargs.update(zip(moved, extra, strict=False))
                args = args[:positional]
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
