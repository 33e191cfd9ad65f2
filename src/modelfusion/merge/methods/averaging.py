"""Averaging: the weighted mean of the models (model soups), Model Stock's step toward it from a base, and
passthrough (one model, optionally scaled: the building block of frankenmerges)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ...errors import ConfigError
from .base import Coefficient, Flag, check_shapes, compute_dtype, need_base, per_model, register_method
from .streaming import Rows, combined_blocks, gram, model_rows, whole

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


def _model_stock_blocks(
    read: Callable[[int, Rows], torch.Tensor],
    read_base: Callable[[Rows], torch.Tensor] | None,
    blocks: Sequence[Rows],
    count: int,
    numel: int | None = None,
) -> Iterator[torch.Tensor]:
    """`model_stock` block by block: one pass for the dot products of the offsets, one writing each block."""
    if read_base is None:
        raise ConfigError("merge method 'model_stock' needs a base model (base_model in the config)")
    if count < 2:
        raise ConfigError(f"model_stock needs at least 2 models besides the base, got {count}")

    def offsets(rows: Rows) -> list[torch.Tensor]:
        return model_rows(read, read_base, count, rows, offsets=True)[0]

    products = gram(offsets, blocks)
    norms = products.diagonal().sqrt()
    cosines = [
        (products[i, j] / (norms[i] * norms[j]).clamp_min(1e-6)).clamp(-1, 1)
        for i in range(count)
        for j in range(i + 1, count)
    ]
    cos = float(torch.stack(cosines).mean())
    denominator = 1 + (count - 1) * cos
    ratio = 0.0 if abs(denominator) < 1e-8 else count * cos / denominator  # 0: the base as it is

    def models_and_base(rows: Rows) -> list[torch.Tensor]:
        tensors, base = model_rows(read, read_base, count, rows)
        return [*tensors, base]

    # ratio * mean(models) + (1 - ratio) * base
    coefficients = [ratio / count] * count + [1 - ratio]
    yield from combined_blocks(models_and_base, blocks, coefficients, read_base(blocks[0]).dtype)


@register_method("model_stock", base="required", block_function=_model_stock_blocks, reference="Jang et al., 2024")
def model_stock(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None) -> torch.Tensor:
    """Model Stock (Jang et al., 2024): move from the base toward the average of the fine-tunes by
    `t = N cos / (1 + (N - 1) cos)`, cos the mean pairwise cosine of their offsets from the base (a pass over
    the rows gathers the offsets' dot products, so it streams)."""
    base = need_base(base, "model_stock")
    check_shapes(tensors, base)
    return whole(_model_stock_blocks, tensors, base)


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
