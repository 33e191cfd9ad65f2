"""Streaming the merges that need whole-tensor statistics, so that they run in bounded memory.

A block function (`MergeMethod.block_function`) sees a tensor as blocks of rows: `read(i, rows)` gives model
i's rows, `read_base(rows)` the base's (None without a base). The methods here make one or two passes over
the blocks that gather small statistics, most often the Gram matrix of the models' vectors (their dot
products: what norms, angles and spherical means need), then a last pass that writes each block as a linear
combination of the models' rows. Peak memory is a few blocks whatever the tensor's size, and a merge in
memory is the same function over one block, so both give the same result up to the order of float64 sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from .base import compute_dtype

__all__ = ["Rows", "gram", "combined_blocks", "whole", "model_rows", "matrix_size", "mean_update_blocks"]

Rows = slice | None
Vectors = Callable[[Rows], list[torch.Tensor]]


def model_rows(
    read: Callable[[int, Rows], torch.Tensor],
    read_base: Callable[[Rows], torch.Tensor] | None,
    count: int,
    rows: Rows,
    *,
    offsets: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The models' rows and the base's (None without one) in the arithmetic's dtype; with `offsets`, each
    model's rows minus the base's (its task vector)."""
    tensors = [read(i, rows) for i in range(count)]
    base = read_base(rows) if read_base is not None else None
    dtype = compute_dtype([*tensors, *([base] if base is not None else [])])
    tensors = [t.to(dtype) for t in tensors]
    base = base.to(dtype) if base is not None else None
    if offsets and base is not None:
        tensors = [t - base for t in tensors]
    return tensors, base


def gram(vectors: Vectors, blocks: Sequence[Rows]) -> torch.Tensor:
    """The Gram matrix `[V, V]` (float64) of the V vectors `vectors(rows)` gives block by block."""
    total = None
    for rows in blocks:
        stacked = torch.stack([v.reshape(-1).double() for v in vectors(rows)])  # [V, block entries]
        product = stacked @ stacked.T
        total = product if total is None else total + product
        del stacked
    return total


def combined_blocks(
    vectors: Vectors, blocks: Sequence[Rows], coefficients: Sequence[float], out_dtype: torch.dtype
) -> Iterator[torch.Tensor]:
    """Each block of `sum_j coefficients[j] * vectors(rows)[j]`, in `out_dtype`."""
    for rows in blocks:
        parts = vectors(rows)
        total = torch.zeros_like(parts[0])
        for coefficient, part in zip(coefficients, parts, strict=True):
            total.add_(part, alpha=float(coefficient))
        yield total.to(out_dtype)


def whole(
    block_function: Callable[..., Iterator[torch.Tensor]],
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    **params,
) -> torch.Tensor:
    """A block function run on whole tensors in memory: one block, the merge of the whole tensor."""
    read_base = (lambda rows: base) if base is not None else None
    return next(block_function(lambda i, rows: tensors[i], read_base, [None], len(tensors), **params))


def matrix_size(first: torch.Tensor, numel: int | None) -> tuple[int, int] | None:
    """(rows, columns) of the tensor whose first block of rows is `first` (`numel`: the whole tensor's size,
    None when `first` is the whole of it), if it is a matrix of at least 2 x 2; else None."""
    if first.ndim != 2 or first.shape[1] < 2:
        return None
    height = numel // first.shape[1] if numel else first.shape[0]
    return (height, first.shape[1]) if height >= 2 else None


def mean_update_blocks(
    read: Callable[[int, Rows], torch.Tensor],
    read_base: Callable[[Rows], torch.Tensor],
    blocks: Sequence[Rows],
    count: int,
    scale: float,
) -> Iterator[torch.Tensor]:
    """Each block of `base + scale * mean_i (model_i - base)`, in the base's dtype: what the methods that merge
    matrices give the tensors that are not (biases, norms)."""
    for rows in blocks:
        deltas, base = model_rows(read, read_base, count, rows, offsets=True)
        yield (base + scale * torch.stack(deltas).mean(0)).to(read_base(rows).dtype)
