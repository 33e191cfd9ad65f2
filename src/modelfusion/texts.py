"""`Texts`: the inputs of a text split, indexed like the first dimension of a tensor.

A text dataset's splits hold strings, not features: a transformers member tokenizes them itself. `Texts` lets
the code written for tensors (`X[start:stop]`, `X[index_tensor]`, `len(X)`) take strings unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from .errors import InvalidInputError

__all__ = ["Texts", "is_texts", "as_texts"]


class Texts(Sequence[str]):
    """An immutable sequence of strings that a slice, an index tensor, array or list, or a boolean mask selects
    from, giving `Texts` again (an integer gives one string)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[str]) -> None:
        items = tuple(items)
        for position, item in enumerate(items):
            if not isinstance(item, str):
                raise InvalidInputError(f"text {position} is a {type(item).__name__}, not a string")
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    @property
    def shape(self) -> tuple[int]:
        """`(N,)`: one string per sample, so `input_shape` (the shape after the first dimension) is `()`."""
        return (len(self._items),)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Texts(self._items[index])
        if isinstance(index, int | np.integer):
            return self._items[index]
        positions = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        if positions.dtype == bool:
            if positions.shape != (len(self),):
                raise InvalidInputError(f"a mask of shape {positions.shape} cannot select from {len(self)} texts")
            positions = np.flatnonzero(positions)
        return Texts(self._items[int(i)] for i in positions.reshape(-1))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Texts) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Texts({len(self)} strings)"


def is_texts(X: object) -> bool:
    """Whether `X` is a batch of strings (`Texts`, or a non-empty list or tuple of strings) rather than a tensor."""
    if isinstance(X, Texts):
        return True
    return isinstance(X, list | tuple) and len(X) > 0 and all(isinstance(x, str) for x in X)


def as_texts(X: Sequence[str]) -> Texts:
    return X if isinstance(X, Texts) else Texts(X)
