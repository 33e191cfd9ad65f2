"""Interpolation between two models: SLERP on the sphere, and NearSwap (the other model where the two are close)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated

import torch
from pydantic import Field

from ...errors import ConfigError
from .base import Fraction, Positive, check_shapes, compute_dtype, need_base, register_method
from .streaming import Rows, combined_blocks, gram, model_rows, whole

__all__ = ["slerp", "nearswap"]


Position = Annotated[Fraction, Field(description="the position from the base (0) to the other model (1)")]
Closeness = Annotated[Positive, Field(description="the distance under which an entry takes the other model's value")]


def _slerp_blocks(
    read: Callable[[int, Rows], torch.Tensor],
    read_base: Callable[[Rows], torch.Tensor] | None,
    blocks: Sequence[Rows],
    count: int,
    numel: int | None = None,
    *,
    t: float = 0.5,
) -> Iterator[torch.Tensor]:
    """`slerp` block by block: one pass for the two norms and the dot product, one writing each block."""
    if read_base is None:
        raise ConfigError("merge method 'slerp' needs a base model (base_model in the config)")
    if count != 1:
        raise ConfigError(f"slerp interpolates the base with exactly one other model, got {count}")

    def pair(rows: Rows) -> list[torch.Tensor]:
        (model,), base = model_rows(read, read_base, 1, rows)
        return [base, model]

    products = gram(pair, blocks)
    n0, n1 = math.sqrt(products[0, 0]), math.sqrt(products[1, 1])
    dot = max(-1.0, min(1.0, float(products[0, 1]) / ((n0 if n0 > 1e-8 else 1.0) * (n1 if n1 > 1e-8 else 1.0))))
    if abs(dot) > 0.9995:
        coefficients = (1 - t, t)
    else:
        theta = math.acos(dot)
        coefficients = (math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta))
    yield from combined_blocks(pair, blocks, coefficients, read_base(blocks[0]).dtype)


@register_method("slerp", base="required", block_function=_slerp_blocks, reference="Shoemake, 1985; mergekit's slerp")
def slerp(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *, t: Position = 0.5) -> torch.Tensor:
    """Spherical linear interpolation from `base` (t=0) to the one other model (t=1) (Shoemake, 1985).

    As mergekit: the whole tensor is one vector; the angle comes from the normalized vectors (norms under
    1e-8 count as 1), and near-parallel or near-opposite tensors (|cos| > 0.9995) fall back to linear
    interpolation. The sine coefficients multiply the original, unnormalized tensors. Streamed: norms and
    angle from one pass over the rows, then the rows.
    """
    base = need_base(base, "slerp")
    check_shapes(tensors, base)
    return whole(_slerp_blocks, tensors, base, t=t)


@register_method(
    "nearswap",
    base="required",
    rows_separable=True,
    reference="alchemonaut/QuartetAnemoi-70B-t0.0001; mergekit",
)
def nearswap(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *, t: Closeness = 0.5) -> torch.Tensor:
    """Per entry, move from `base` toward the other model by `min(1, t / |base - other|)`: entries where the two
    nearly agree take the other model's value, entries where they differ much stay near the base."""
    base = need_base(base, "nearswap")
    if len(tensors) != 1:
        raise ConfigError(f"nearswap takes the base and exactly one other model, got {len(tensors)}")
    check_shapes(tensors, base)
    dtype = compute_dtype([base, *tensors])
    a, b = base.to(dtype), tensors[0].to(dtype)
    weight = (t / (a - b).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return (weight * b + (1 - weight) * a).to(base.dtype)
