"""Merging on the sphere: NuSLERP (two models, optionally around a base, whole-tensor or per row), Multi-SLERP
(any number, barycentric on the sphere) and the Karcher mean (the Riemannian centre of mass); as mergekit
0.1.5 defines them.

Each merged tensor is a combination of the models' tensors whose coefficients depend only on their norms and
angles, so each method streams: a pass over blocks of rows gathers the dot products (the Gram matrix, or per
row or column for NuSLERP's row-wise forms) in float64, then a pass writes each block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from ...errors import ConfigError
from .base import Coefficient, Count, Flag, Positive, check_shapes, per_model, register_method
from .streaming import Rows, combined_blocks, gram, model_rows, whole

__all__ = ["nuslerp", "multislerp", "karcher"]

Read = Callable[[int, Rows], torch.Tensor]
ReadBase = Callable[[Rows], torch.Tensor] | None


def _slerp_coefficients(
    t: float, squares0: torch.Tensor, squares1: torch.Tensor, dots: torch.Tensor, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficients (a, b) of `a * v0 + b * v1`, the SLERP at t of vectors with these squared norms and dot
    products (elementwise over any shape); nearly colinear vectors are interpolated linearly."""
    n0, n1 = squares0.sqrt().clamp(min=1e-7), squares1.sqrt().clamp(min=1e-7)
    cos = (dots / (n0 * n1)).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sine = torch.where(colinear, 1, torch.sin(theta))
    a = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sine)
    b = torch.where(colinear, t, torch.sin(t * theta) / sine)
    return a, b


def _task_vectors_plus_base(read: Read, read_base: ReadBase, count: int, coefficients: Sequence[float]):
    """(vectors, coefficients) for `combined_blocks` giving `sum_i c_i * task vector i`, plus the base when
    there is one (the task vectors are then the models minus the base; without a base, the models)."""

    def vectors(rows: Rows) -> list[torch.Tensor]:
        tensors, base = model_rows(read, read_base, count, rows, offsets=True)
        return tensors if base is None else [*tensors, base]

    return vectors, list(coefficients) if read_base is None else [*coefficients, 1.0]


def _nuslerp_blocks(
    read: Read,
    read_base: ReadBase,
    blocks: Sequence[Rows],
    count: int,
    numel: int | None = None,
    *,
    weight=None,
    nuslerp_row_wise: bool = False,
    nuslerp_flatten: bool = True,
) -> Iterator[torch.Tensor]:
    """`nuslerp` block by block. Whole-tensor (flatten): the 2 x 2 Gram matrix first. Per row along the last
    dimension: each block's rows on their own. Row-wise (along the first dimension): per-column sums first."""
    if count != 2:
        raise ConfigError(f"nuslerp interpolates exactly two models (a base is optional), got {count}")
    w0, w1 = per_model("weight", weight, 2, None)
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    out_dtype = read(0, blocks[0]).dtype
    vectors, with_base = _task_vectors_plus_base(read, read_base, 2, [])
    if nuslerp_flatten or read(0, blocks[0]).ndim < 2:  # one vector: the whole tensor
        products = gram(lambda rows: vectors(rows)[:2], blocks)
        a, b = _slerp_coefficients(t, products[0, 0], products[1, 1], products[0, 1])
        yield from combined_blocks(vectors, blocks, [float(a), float(b), *with_base], out_dtype)
        return

    def merged(parts: list[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        v0, v1 = parts[:2]
        out = a.to(v0.dtype) * v0 + b.to(v0.dtype) * v1
        return (out + parts[2] if with_base else out).to(out_dtype)

    if not nuslerp_row_wise:  # a vector per row of the last dimension: a block holds whole rows
        for rows in blocks:
            parts = vectors(rows)
            v0, v1 = parts[:2]
            a, b = _slerp_coefficients(t, v0.square().sum(-1), v1.square().sum(-1), (v0 * v1).sum(-1))
            yield merged(parts, a[..., None], b[..., None])
        return
    sums = None  # per column (every index but the first): squared norms and dot products over all rows
    for rows in blocks:
        v0, v1 = (v.double() for v in vectors(rows)[:2])
        block = torch.stack([v0.square().sum(0), v1.square().sum(0), (v0 * v1).sum(0)])
        sums = block if sums is None else sums + block
    a, b = _slerp_coefficients(t, *sums)
    for rows in blocks:
        yield merged(vectors(rows), a, b)


@register_method(
    "nuslerp",
    base="optional",
    block_function=_nuslerp_blocks,
    per_model=("weight",),
    reference="mergekit's nuslerp",
)
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
    check_shapes(tensors, base)
    return whole(
        _nuslerp_blocks,
        tensors,
        base,
        weight=weight,
        nuslerp_row_wise=nuslerp_row_wise,
        nuslerp_flatten=nuslerp_flatten,
    )


def _multislerp_blocks(
    read: Read,
    read_base: ReadBase,
    blocks: Sequence[Rows],
    count: int,
    numel: int | None = None,
    *,
    weight=None,
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> Iterator[torch.Tensor]:
    """`multislerp` block by block: every vector the method forms (unit vectors, their weighted mean direction,
    the tangent) is a combination of the models' task vectors, so their Gram matrix gives every norm and dot
    product, and the merge is one more combination of them."""
    out_dtype = read(0, blocks[0]).dtype
    if count == 1:
        yield from (read(0, rows) for rows in blocks)
        return
    weights = torch.tensor(per_model("weight", weight, count, None), dtype=torch.float64)
    if normalize_weights:
        weights = weights / weights.sum()
    products = gram(lambda rows: model_rows(read, read_base, count, rows, offsets=True)[0], blocks)
    norms = products.diagonal().clamp_min(0).sqrt()
    scaled = 1 / (norms + eps)  # unit vector i = scaled[i] * task vector i
    units = products * scaled[:, None] * scaled[None, :]  # their dot products
    mean_norm = math.sqrt(abs(float(weights @ units @ weights)))
    if not bool((products.diagonal() > 0).any()):  # every model equals the base here (mergekit stops)
        on_units = torch.zeros(count, dtype=torch.float64)
    elif mean_norm < eps:
        if count != 2:
            raise ConfigError(
                "multislerp: the weighted mean of the models' directions is zero (opposite models with weights "
                "that balance out); change the weights"
            )
        on_units = weights / scaled  # the weighted sum of the task vectors themselves
    else:
        mean = weights / mean_norm  # the mean direction, on the unit vectors
        along = units @ mean  # each unit vector's component along it
        tangent = weights - float(weights @ along) * mean
        length = math.sqrt(abs(float(tangent @ units @ tangent))) + eps
        direction = mean * math.cos(length) + tangent * (math.sin(length) / length)
        on_units = direction * float(norms @ weights)
    coefficients = (on_units * scaled).tolist()
    vectors, coefficients = _task_vectors_plus_base(read, read_base, count, coefficients)
    yield from combined_blocks(vectors, blocks, coefficients, out_dtype)


@register_method(
    "multislerp",
    base="optional",
    block_function=_multislerp_blocks,
    per_model=("weight",),
    reference="Goddard, 2025; mergekit",
)
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
    check_shapes(tensors, base)
    return whole(_multislerp_blocks, tensors, base, weight=weight, normalize_weights=normalize_weights, eps=eps)


def _karcher_blocks(
    read: Read,
    read_base: ReadBase,
    blocks: Sequence[Rows],
    count: int,
    numel: int | None = None,
    *,
    max_iter: int = 10,
    tol: float = 1e-5,
) -> Iterator[torch.Tensor]:
    """`karcher` block by block: the iteration runs on coefficients over the inputs' unit vectors, whose Gram
    matrix one pass gathers; the mean is then one combination of the inputs."""

    def inputs(rows: Rows) -> list[torch.Tensor]:
        tensors, base = model_rows(read, read_base, count, rows)
        return ([base] if base is not None else []) + tensors

    out_dtype = (read_base or (lambda rows: read(0, rows)))(blocks[0]).dtype
    total = count + (read_base is not None)
    if total == 1:
        yield from (read(0, rows).to(out_dtype) for rows in blocks)
        return
    products = gram(inputs, blocks)
    norms = products.diagonal().clamp_min(0).sqrt()
    valid = [i for i in range(total) if norms[i] > tol]
    if not valid:
        yield from combined_blocks(inputs, blocks, [0.0] * total, out_dtype)
        return
    units = products[valid][:, valid] / (norms[valid][:, None] * norms[valid][None, :])
    shares = torch.full((len(valid),), 1.0 / len(valid), dtype=torch.float64)

    def length(c: torch.Tensor) -> float:  # of the vector with coefficients c on the unit vectors
        return math.sqrt(abs(float(c @ units @ c)))

    mean = shares.clone()
    mean = torch.eye(len(valid), dtype=torch.float64)[0] if length(mean) < tol else mean / length(mean)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        along = units @ mean
        for k, share in enumerate(shares.tolist()):
            cos = max(-1.0, min(1.0, float(along[k])))
            theta = math.acos(cos)
            if theta >= tol:  # the log map of unit vector k at the mean, on the coefficients
                towards = -cos * mean
                towards[k] += 1.0
                tangent += share * (theta / math.sin(theta)) * towards
        step = length(tangent)
        if step < tol:
            break
        mean = math.cos(step) * mean + math.sin(step) * (tangent / step)
        if length(mean) > tol:
            mean = mean / length(mean)
    scale = float(norms.sum()) / total  # the mean norm, the zero tensors' too
    coefficients = [0.0] * total
    for position, i in enumerate(valid):
        coefficients[i] = scale * float(mean[position]) / float(norms[i])
    yield from combined_blocks(inputs, blocks, coefficients, out_dtype)


@register_method(
    "karcher",
    base="optional",
    block_function=_karcher_blocks,
    reference="Karcher mean (arXiv:2603.04972); mergekit's karcher",
)
def karcher(
    tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *, max_iter: Count = 10, tol: Positive = 1e-5
) -> torch.Tensor:
    """The equally weighted Karcher mean of every input (the base too, when given) on the unit sphere, by up to
    `max_iter` Riemannian gradient steps, scaled to the mean norm; zero tensors carry no direction."""
    check_shapes(tensors, base)
    return whole(_karcher_blocks, tensors, base, max_iter=max_iter, tol=tol)
