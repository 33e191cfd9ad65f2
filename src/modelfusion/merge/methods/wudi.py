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
    and Adam works entry by entry, so each block of rows is optimized on its own once a first pass has gathered
    the Gram matrices `G_i = tau_i^T tau_i` (`[in, in]`), which give H and each row's R, and the mean absolute
    entry of `sum_i tau_i` that sets the step: the same steps as on the whole matrix."""
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
    grams = torch.zeros(count, width, width, dtype=torch.float64)
    absolute, entries = 0.0, 0
    for rows in blocks:
        deltas = updates(rows)[0].double()
        grams += torch.einsum("kri,krj->kij", deltas, deltas)
        absolute, entries = absolute + float(deltas.sum(0).abs().sum()), entries + deltas[0].numel()
    norms = grams.diagonal(dim1=1, dim2=2).sum(-1)  # [K]: ||tau_i||^2
    active = norms > 0  # a task vector of zeros interferes with nothing
    weights = 1 / norms[active]
    hessian = torch.einsum("k,kij->ij", weights, grams[active])
    step = lr * absolute / max(entries, 1)
    for rows in blocks:
        deltas, base = updates(rows)
        merged = _least_interference(deltas.double(), active, weights, grams, hessian, steps, step)
        yield (base + scale * merged.to(base.dtype)).to(out_dtype)


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
    deltas: torch.Tensor,
    active: torch.Tensor,
    weights: torch.Tensor,
    grams: torch.Tensor,
    hessian: torch.Tensor,
    steps: int,
    step: float,
) -> torch.Tensor:
    """Adam on the WUDI loss from the sum of the task vectors, for rows `deltas` `[K, rows, in]` (float64). The
    loss is quadratic in T, so its gradient `2 (T H - R)` needs only `H = sum_i G_i / n_i` and `R = sum_i tau_i
    G_i / n_i`, computed once: each step costs one [rows, in] x [in, in] product, not K. In float64: at the
    optimum the gradient is round-off, which Adam would otherwise scale up to full steps."""
    merged = deltas.sum(0)
    if steps == 0 or not bool(active.any()):
        return merged
    target = torch.einsum("k,kri,kij->rj", weights, deltas[active], grams[active])
    parameter = merged.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([parameter], lr=step)
    with torch.no_grad():
        for _ in range(steps):
            parameter.grad = 2 * (parameter @ hessian - target)
            optimizer.step()
    return parameter.detach()
