"""Averaging: the weighted mean of the models (model soups), Model Stock's step toward it from a base, and
passthrough (one model, optionally scaled: the building block of frankenmerges)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import ConfigError
from .base import Coefficient, Flag, check_shapes, compute_dtype, need_base, per_model, register_method

__all__ = ["linear", "model_stock", "passthrough"]


@register_method("linear", base="none", rows_separable=True, per_model=("weight",), reference="Wortsman et al., 2022")
def linear(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    *,
    weight: Coefficient | Sequence[Coefficient] | None = None,
    normalize: Flag = True,
) -> torch.Tensor:
    """Weighted average of the models' tensors: `sum(w_i x_i) / sum(w_i)` (Wortsman et al., 2022, "Model soups").

    Args:
        weight: one weight per model (default 1 each).
        normalize: divide by the sum of the weights (mergekit's default); `False` gives `sum(w_i x_i)`.
    """
    check_shapes(tensors, None)
    weights = per_model("weight", weight, len(tensors), 1.0)
    if normalize and abs(sum(weights)) < 1e-12:
        raise ConfigError(f"linear merge with normalize: the weights {weights} sum to zero")
    dtype = compute_dtype(tensors)
    total = torch.mul(tensors[0].to(dtype), weights[0])  # accumulated in place: one output-sized buffer
    for w, t in zip(weights[1:], tensors[1:], strict=True):
        total.add_(t.to(dtype), alpha=w)
    if normalize:
        total.div_(sum(weights))
    return total.to(tensors[0].dtype)


@register_method("model_stock", base="required", reference="Jang et al., 2024")
def model_stock(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None) -> torch.Tensor:
    """Model Stock (Jang et al., 2024): move from the base toward the average of the fine-tunes by
    `t = N cos / (1 + (N - 1) cos)`, cos the mean pairwise cosine of their offsets from the base."""
    base = need_base(base, "model_stock")
    if len(tensors) < 2:
        raise ConfigError(f"model_stock needs at least 2 models besides the base, got {len(tensors)}")
    check_shapes(tensors, base)
    dtype = compute_dtype([base, *tensors])
    w0 = base.to(dtype).reshape(-1)
    offsets = [t.to(dtype).reshape(-1) - w0 for t in tensors]
    cosines = [
        ((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-6)).clamp(-1, 1)
        for i, a in enumerate(offsets)
        for b in offsets[i + 1 :]
    ]
    cos = torch.stack(cosines).mean()
    n = len(tensors)
    denominator = 1 + (n - 1) * cos
    if abs(float(denominator)) < 1e-8:
        return base.clone()
    ratio = n * cos / denominator
    average = sum(t.to(dtype).reshape(-1) for t in tensors) / n
    return (ratio * average + (1 - ratio) * w0).reshape(base.shape).to(base.dtype)


@register_method("passthrough", rows_separable=True, per_model=("scale",), reference="mergekit's passthrough")
def passthrough(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    *,
    scale: Coefficient | Sequence[Coefficient] | None = None,
) -> torch.Tensor:
    """The one model's tensor, times `scale` when given."""
    if len(tensors) != 1:
        raise ConfigError(f"passthrough takes exactly one model, got {len(tensors)}")
    factor = per_model("scale", scale, 1, 1.0)[0]
    return tensors[0] if factor == 1.0 else (tensors[0].to(compute_dtype(tensors)) * factor).to(tensors[0].dtype)
