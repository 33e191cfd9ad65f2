"""WUDI-merging (Cheng et al., ICML 2025, "Whoever Started the Interference Should End It: Guiding Data-Free Model
Merging via Task Vectors", arXiv:2503.08099): data-free, it needs only the base and the fine-tunes.

The paper shows that the rows of a linear layer's task vector span, approximately, the inputs that layer sees on
its task. So the interference a merged update `T` causes on task i, `(T - tau_i) x` for x of task i, is measured
without data by `||(T - tau_i) tau_i^T||^2`. WUDI minimizes the sum of these over the tasks, each divided by
`||tau_i||^2`, with Adam from `T = sum_i tau_i`, and adds `T` to the base. Tensors that are not matrices (biases,
norms) get the mean task vector, as in the paper's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field

from ...errors import ConfigError
from .base import Coefficient, Positive, check_shapes, compute_dtype, need_base, register_method

__all__ = ["wudi"]

Steps = Annotated[int, Field(strict=True, ge=0, le=100_000, description="Adam steps (0: task arithmetic's sum)")]


@register_method(
    "wudi",
    base="required",
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
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"wudi: steps is a whole number of Adam steps (0 or more), got {steps!r}")
    if not lr > 0:
        raise ConfigError(f"wudi: lr is a positive step size, got {lr!r}")
    dtype = compute_dtype([base, *tensors])
    b = base.to(dtype)
    deltas = torch.stack([x.to(dtype) - b for x in tensors])  # [K, out, in]
    if b.ndim != 2 or min(b.shape) < 2:
        return (b + scale * deltas.mean(0)).to(base.dtype)
    merged = _least_interference(deltas, steps, lr)
    return (b + scale * merged).to(base.dtype)


def _least_interference(deltas: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Adam on the WUDI loss from the sum of the task vectors. The loss is quadratic in T, so its gradient
    `2 (T H - R)` needs only `H = sum_i G_i / n_i` and `R = sum_i tau_i G_i / n_i` (G_i = tau_i^T tau_i, n_i =
    ||tau_i||^2), computed once: each step costs one [out, in] x [in, in] product, not K. In float64: at the
    optimum the gradient is round-off, which Adam would otherwise scale up to full steps."""
    dtype, deltas = deltas.dtype, deltas.double()
    norms = deltas.square().sum(dim=(1, 2))  # [K]
    active = norms > 0  # a task vector of zeros interferes with nothing
    merged = deltas.sum(0)
    if steps == 0 or not bool(active.any()):
        return merged.to(dtype)
    vectors, weights = deltas[active], 1 / norms[active]
    grams = torch.einsum("kri,krj->kij", vectors, vectors)  # [K, in, in]
    hessian = torch.einsum("k,kij->ij", weights, grams)
    target = torch.einsum("k,kri,kij->rj", weights, vectors, grams)
    step = lr * float(merged.abs().mean())
    parameter = merged.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([parameter], lr=step)
    with torch.no_grad():
        for _ in range(steps):
            parameter.grad = 2 * (parameter @ hessian - target)
            optimizer.step()
    return parameter.detach().to(dtype)
