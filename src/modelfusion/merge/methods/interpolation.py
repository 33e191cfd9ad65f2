"""Interpolation between two models: SLERP on the sphere, and NearSwap (the other model where the two are close)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field

from ...errors import ConfigError
from .base import Fraction, Positive, check_shapes, compute_dtype, need_base, register_method

__all__ = ["slerp", "nearswap"]


Position = Annotated[Fraction, Field(description="the position from the base (0) to the other model (1)")]
Closeness = Annotated[Positive, Field(description="the distance under which an entry takes the other model's value")]


@register_method("slerp", base="required", reference="Shoemake, 1985; mergekit's slerp")
def slerp(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *, t: Position = 0.5) -> torch.Tensor:
    """Spherical linear interpolation from `base` (t=0) to the one other model (t=1) (Shoemake, 1985).

    As mergekit: the whole tensor is one vector; the angle comes from the normalized vectors (norms under
    1e-8 count as 1), and near-parallel or near-opposite tensors (|cos| > 0.9995) fall back to linear
    interpolation. The sine coefficients multiply the original, unnormalized tensors.
    """
    base = need_base(base, "slerp")
    if len(tensors) != 1:
        raise ConfigError(f"slerp interpolates the base with exactly one other model, got {len(tensors)}")
    check_shapes(tensors, base)
    dtype = compute_dtype([base, *tensors])
    v0, v1 = base.to(dtype).reshape(-1), tensors[0].to(dtype).reshape(-1)
    n0, n1 = v0.norm(), v1.norm()
    dot = ((v0 / (n0 if n0 > 1e-8 else 1.0)) * (v1 / (n1 if n1 > 1e-8 else 1.0))).sum().clamp(-1.0, 1.0)
    if abs(float(dot)) > 0.9995:
        result = (1 - t) * v0 + t * v1
    else:
        theta = torch.arccos(dot)
        result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return result.reshape(base.shape).to(base.dtype)


@register_method("nearswap", base="required", reference="alchemonaut/QuartetAnemoi-70B-t0.0001; mergekit")
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
