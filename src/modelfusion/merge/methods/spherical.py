"""Merging on the sphere: NuSLERP (two models, optionally around a base, whole-tensor or per row), Multi-SLERP
(any number, barycentric on the sphere) and the Karcher mean (the Riemannian centre of mass); as mergekit
0.1.5 defines them, in float32 (float64 for float64 inputs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import ConfigError
from .base import Coefficient, Count, Flag, Positive, check_shapes, compute_dtype, per_model, register_method

__all__ = ["nuslerp", "multislerp", "karcher"]


def _slerp_rows(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SLERP of each row of `v0` and `v1` (`[rows, n]`); nearly colinear rows are interpolated linearly."""
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * v0 + t * v1, spherical)


@register_method("nuslerp", base="optional", per_model=("weight",), reference="mergekit's nuslerp")
def nuslerp(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    *,
    weight: Coefficient | Sequence[Coefficient] | None = None,
    nuslerp_row_wise: Flag = False,
    nuslerp_flatten: Flag = True,
) -> torch.Tensor:
    """SLERP of two models at t = w_1 / (w_0 + w_1) (0.5 when the weights sum to 0), of their task vectors when
    a base is given. The whole tensor is one vector (`nuslerp_flatten`), or each row along the last dimension,
    or with `nuslerp_row_wise` along the first."""
    if len(tensors) != 2:
        raise ConfigError(f"nuslerp interpolates exactly two models (a base is optional), got {len(tensors)}")
    check_shapes(tensors, base)
    w0, w1 = per_model("weight", weight, 2, None)
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    dtype = compute_dtype([*tensors, *([base] if base is not None else [])])
    v0, v1 = (x.to(dtype) for x in tensors)
    if base is not None:
        v0, v1 = v0 - base.to(dtype), v1 - base.to(dtype)
    shape = v0.shape
    if nuslerp_flatten:
        merged = _slerp_rows(t, v0.reshape(1, -1), v1.reshape(1, -1)).reshape(shape)
    elif nuslerp_row_wise:
        merged = _slerp_rows(t, v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1)
    else:
        merged = _slerp_rows(t, v0, v1)
    if base is not None:
        merged = merged + base.to(dtype)
    return merged.reshape(shape).to(tensors[0].dtype)


@register_method("multislerp", base="optional", per_model=("weight",), reference="Goddard, 2025; mergekit")
def multislerp(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    *,
    weight: Coefficient | Sequence[Coefficient] | None = None,
    normalize_weights: Flag = True,
    eps: Positive = 1e-8,
) -> torch.Tensor:
    """Barycentric interpolation on the hypersphere: the models (their task vectors when a base is given) are
    projected to the unit sphere, averaged in the tangent space at their weighted mean direction, mapped back
    and scaled to their weighted mean norm. Where every model equals the base, the base is kept (mergekit
    raises there)."""
    if len(tensors) == 1:
        return tensors[0]
    check_shapes(tensors, base)
    dtype = compute_dtype([*tensors, *([base] if base is not None else [])])
    stacked = torch.stack([x.to(dtype) for x in tensors])
    if base is not None:
        stacked = stacked - base.to(dtype)
    flat = stacked.reshape(len(tensors), -1)
    weights = torch.tensor(per_model("weight", weight, len(tensors), None), dtype=dtype)
    if normalize_weights:
        weights = weights / weights.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights[:, None]).sum(0)
    if not bool(flat.any()):  # every model equals the base here (a frozen layer): mergekit stops with an error
        merged = torch.zeros_like(stacked[0])
    elif mean.norm() < eps:
        if len(tensors) != 2:
            raise ConfigError(
                "multislerp: the weighted mean of the models' directions is zero (opposite models with weights "
                "that balance out); change the weights"
            )
        merged = (stacked[0] * weights[0] + stacked[1] * weights[1]).reshape(stacked.shape[1:])
    else:
        mean = mean / mean.norm()
        tangent = ((units - (units * mean).sum(-1, keepdim=True) * mean) * weights[:, None]).sum(0)
        length = tangent.norm() + eps
        on_sphere = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
        merged = (on_sphere * (norms[:, 0] * weights).sum()).reshape(stacked.shape[1:])
    if base is not None:
        merged = merged + base.to(dtype)
    return merged.to(tensors[0].dtype)


@register_method("karcher", base="optional", reference="Karcher mean (arXiv:2603.04972); mergekit's karcher")
def karcher(
    tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *, max_iter: Count = 10, tol: Positive = 1e-5
) -> torch.Tensor:
    """The equally weighted Karcher mean of every input (the base too, when given) on the unit sphere, by up to
    `max_iter` Riemannian gradient steps, scaled to the mean norm; zero tensors carry no direction."""
    inputs = ([base] if base is not None else []) + list(tensors)
    if len(inputs) == 1:
        return inputs[0]
    check_shapes(inputs, None)
    dtype = compute_dtype(inputs)
    vectors = [x.to(dtype).reshape(-1) for x in inputs]
    norms = [v.norm() for v in vectors]
    alphas = [1.0 / len(inputs)] * len(inputs)
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(inputs[0])
    units = [vectors[i] / norms[i] for i in valid]
    shares = [alphas[i] / sum(alphas[j] for j in valid) for i in valid]
    mean = sum(a * u for a, u in zip(shares, units, strict=True))
    mean = units[0].clone() if mean.norm().item() < tol else mean / mean.norm()
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for share, unit in zip(shares, units, strict=True):
            cos = torch.clamp(mean @ unit, -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() >= tol:
                tangent += share * (theta / torch.sin(theta)) * (unit - cos * mean)
        step = tangent.norm()
        if step.item() < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        if mean.norm().item() > tol:
            mean = mean / mean.norm()
    scale = sum(a * n for a, n in zip(alphas, norms, strict=True))
    return (scale * mean).reshape(inputs[0].shape).to(inputs[0].dtype)
