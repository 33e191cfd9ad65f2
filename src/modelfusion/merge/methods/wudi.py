"""WUDI-merging (Cheng et al., ICML 2025, "Whoever Started the Interference Should End It: Guiding Data-Free Model
Merging via Task Vectors", arXiv:2503.08099): data-free, it needs only the base and the fine-tunes.

The paper shows that the rows of a linear layer's task vector span, approximately, the inputs that layer sees on
its task. So the interference a merged update `T` causes on task i, `(T - tau_i) x` for x of task i, is measured
without data by `||(T - tau_i) tau_i^T||^2`. WUDI minimizes the sum of these over the tasks, each divided by
`||tau_i||^2`, with Adam from `T = sum_i tau_i`, and adds `T` to the base. Tensors that are not matrices (biases,
norms) get the mean task vector, as in the paper's code. Streamed by blocks of rows (`_wudi_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Annotated

import torch
from pydantic import Field

from ...errors import ConfigError
from .base import Coefficient, Positive, check_shapes, need_base, register_method
from .streaming import Rows, matrix_size, mean_update_blocks, model_rows, whole

__all__ = ["wudi"]

Steps = Annotated[int, Field(strict=True, ge=0, le=100_000, description="Adam steps (0: task arithmetic's sum)")]


# The most entries the tasks' Gram matrices `[K, in, in]` may hold together (float64: 128 MiB). A wider matrix
# (an MLP's down projection) gets each row's target from the whole task vectors instead (`_targets_from_rows`).
_GRAM_ENTRIES = 2**24
_PART_ENTRIES = 2**18  # entries of the rows Adam runs on at a time (2 MiB in float64)


def _wudi_blocks(
    read: Callable[[int, Rows], torch.Tensor],
    read_base: Callable[[Rows], torch.Tensor] | None,
    blocks: Sequence[Rows],
    count: int,
    numel: int | None = None,
    *,
    steps: int = 300,
    lr: float = 0.02,
    scale: float = 1.0,
) -> Iterator[torch.Tensor]:
    """`wudi` block by block. The loss's gradient `2 (T H - R)` couples the columns of a row of T, never two rows,
    and Adam works entry by entry, so each block of rows is optimized on its own once first passes have gathered
    `H = sum_i G_i / n_i` (`G_i = tau_i^T tau_i`, `[in, in]`, `n_i = ||tau_i||^2`), what gives each row's R, and
    the mean absolute entry of `sum_i tau_i` that sets the step: the same steps as on the whole matrix."""
    read_base = need_base(read_base, "wudi")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"wudi: steps is a whole number of Adam steps (0 or more), got {steps!r}")
    if not lr > 0:
        raise ConfigError(f"wudi: lr is a positive step size, got {lr!r}")
    first, out_dtype = read(0, blocks[0]), read_base(blocks[0]).dtype

    def updates(rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:  # [K, rows, in] and the base's rows
        deltas, base = model_rows(read, read_base, count, rows, offsets=True)
        return torch.stack(deltas), base

    size = matrix_size(first, numel)
    if size is None:  # not a matrix: the mean task vector
        yield from mean_update_blocks(read, read_base, blocks, count, scale)
        return
    width = size[1]
    norms, absolute, entries = torch.zeros(count, dtype=torch.float64), 0.0, 0
    for rows in blocks:
        deltas = updates(rows)[0]
        norms += torch.stack([delta.double().square().sum() for delta in deltas])
        absolute, entries = absolute + float(deltas.double().sum(0).abs().sum()), entries + deltas[0].numel()
    active = norms > 0  # a task vector of zeros interferes with nothing
    weights = torch.where(active, 1 / norms.clamp_min(1e-300), 0)
    targets = _targets_from_grams if count * width * width <= _GRAM_ENTRIES else _targets_from_rows
    hessian, target_of = targets(updates, blocks, weights, width)
    step = lr * absolute / max(entries, 1)
    part = max(1, _PART_ENTRIES // width)
    for rows in blocks:
        deltas, base = updates(rows)
        target = target_of(rows, deltas)
        merged = torch.empty_like(target)
        for start in range(0, len(target), part):  # Adam's state and temporaries for a few rows at a time
            some = slice(start, start + part)
            merged[some] = _least_interference(
                deltas[:, some].double(), target[some], hessian, steps, step, bool(active.any())
            )
        yield (base + scale * merged.to(base.dtype)).to(out_dtype)


def _targets_from_grams(updates, blocks, weights, width):
    """H, and each block's target `R = sum_i tau_i G_i / n_i`, from the tasks' Gram matrices `[K, in, in]`."""
    grams = torch.zeros(len(weights), width, width, dtype=torch.float64)
    for rows in blocks:
        for gram, delta in zip(grams, updates(rows)[0], strict=True):
            delta = delta.double()
            gram.addmm_(delta.T, delta)
    hessian = torch.einsum("k,kij->ij", weights, grams)

    def target_of(rows, deltas):
        target = torch.zeros(deltas.shape[1:], dtype=torch.float64)
        for weight, delta, gram in zip(weights.tolist(), deltas, grams, strict=True):
            target.addmm_(delta.double(), gram, alpha=weight)
        return target

    return hessian, target_of


def _targets_from_rows(updates, blocks, weights, width):
    """H, and the targets `R = sum_i (tau_i tau_i^T) tau_i / n_i` of all rows at once, from the whole task vectors:
    for a matrix wider than tall, whose `[in, in]` Gram matrices would hold far more than its `[out, in]` rows."""
    hessian = torch.zeros(width, width, dtype=torch.float64)
    for rows in blocks:
        for weight, delta in zip(weights.tolist(), updates(rows)[0], strict=True):
            delta = delta.double()
            hessian.addmm_(delta.T, delta, alpha=weight)
    whole_deltas = updates(None)[0]
    targets = torch.zeros(whole_deltas.shape[1:], dtype=torch.float64)  # [out, in]: R of every row, once
    for weight, tau in zip(weights.tolist(), whole_deltas, strict=True):
        tau = tau.double()
        targets.addmm_(tau @ tau.T, tau, alpha=weight)  # through tau tau^T, [out, out]: small for a wide matrix
    del whole_deltas

    def target_of(rows, deltas):
        return targets if rows is None else targets[rows]

    return hessian, target_of


@register_method(
    "wudi",
    base="required",
    block_function=_wudi_blocks,
    reference="Cheng et al., 2025, WUDI-merging (ICML 2025, arXiv:2503.08099)",
)
def wudi(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    *,
    steps: Steps = 300,
    lr: Positive = 0.02,
    scale: Coefficient = 1.0,
) -> torch.Tensor:
    """`base + scale * T`, T the merged task vector that minimizes `sum_i ||(T - tau_i) tau_i^T||^2 / ||tau_i||^2`.

    Args:
        steps: Adam steps from `T = sum_i tau_i` (the paper: 300; 0 gives task arithmetic's sum).
        lr: Adam's step size relative to the mean absolute entry of `sum_i tau_i`, so that one setting fits
            models whose updates differ in scale. The paper's absolute 1e-5 on ViT-B/32, whose merged update has
            entries of about 5e-4, is about 0.02 of it.
        scale: the factor of the merged task vector (the paper: 1).
    """
    base = need_base(base, "wudi")
    check_shapes(tensors, base)
    return whole(_wudi_blocks, tensors, base, steps=steps, lr=lr, scale=scale)


def _least_interference(
    deltas: torch.Tensor, target: torch.Tensor, hessian: torch.Tensor, steps: int, step: float, interferes: bool
) -> torch.Tensor:
    """Adam on the WUDI loss from the sum of the task vectors, for rows `deltas` `[K, rows, in]` (float64). The
    loss is quadratic in T, so its gradient `2 (T H - R)` needs only `H = sum_i G_i / n_i` and the rows' `R =
    sum_i tau_i G_i / n_i`, computed once: each step costs one [rows, in] x [in, in] product, not K. In float64:
    at the optimum the gradient is round-off, which Adam would otherwise scale up to full steps."""
    merged = deltas.sum(0)
    if steps == 0 or not interferes:
        return merged
    parameter = merged.clone().requires_grad_(True)
    parameter.grad = torch.empty_like(merged)
    # one tensor at a time (not foreach), the gradient written in place: no temporaries the size of the rows
    optimizer = torch.optim.Adam([parameter], lr=step, foreach=False)
    with torch.no_grad():
        for _ in range(steps):
            torch.addmm(target, parameter, hessian, beta=-2, alpha=2, out=parameter.grad)
            optimizer.step()
    return parameter.detach()
