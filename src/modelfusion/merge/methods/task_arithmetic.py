"""Task arithmetic and the methods that configure it: TIES, DARE, breadcrumbs, DELLA (one core, presets of
it); and SCE, which weighs task vectors by their variance instead."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field

from ...errors import ConfigError
from .base import (
    METHODS,
    Coefficient,
    Finite,
    Flag,
    MergeMethod,
    Share,
    check_shapes,
    compute_dtype,
    need_base,
    per_model,
    register_method,
)
from .sparsify import _Cut, _row_sample, task_vector_blocks
from .streaming import model_rows, whole

__all__ = ["TaskArithmeticOptions", "task_arithmetic", "task_arithmetic_blocks", "sce"]


Density = Annotated[Share, Field(description="the share of task-vector entries kept")]
Gamma = Annotated[Finite, Field(ge=0, lt=1, description="the share of the largest entries dropped")]
Epsilon = Annotated[Finite, Field(ge=0, lt=0.5, description="the spread of keep probabilities around the density")]


@dataclass(frozen=True)
class TaskArithmeticOptions:
    """The parameters of `base + lambda * mix(w_i * sparsify(x_i - base))`.

    Attributes:
        weight: one weight per model (default 1 each).
        density: per model, the share of task-vector entries kept (1: all).
        lambda_: the scale of the mixed task vector (YAML's `lambda`).
        normalize: divide by the sum of the weights (of the agreeing models, with a consensus).
        sparsification: None, "magnitude" (TIES), "random" (DARE), "breadcrumbs" or "della" (see `sparsify`).
        consensus: None, or "sum": TIES' sign election and disjoint mean.
        gamma: per model (or one for all), breadcrumbs' share of the largest entries dropped.
        epsilon: per model (or one for all), DELLA's spread of keep probabilities around the density.
        rescale: None, "inverse_density" (DARE, DELLA) or "l1" (mergekit's rescale).
        int8_mask: accepted for mergekit's configs; masks here are booleans, so it changes nothing.
        seed: seed of the random drops.
    """

    weight: Coefficient | Sequence[Coefficient] | None = None
    density: Density | Sequence[Density] | None = None
    lambda_: Coefficient = 1.0
    normalize: Flag = False
    sparsification: Literal["magnitude", "random", "breadcrumbs", "della"] | None = None
    consensus: Literal["sum"] | None = None
    gamma: Gamma | Sequence[Gamma] = 0.01
    epsilon: Epsilon | Sequence[Epsilon] = 0.15
    rescale: Literal["inverse_density", "l1"] | None = None
    int8_mask: Flag = False
    seed: int = 0

    @classmethod
    def of(cls, params: dict) -> TaskArithmeticOptions:
        try:
            return cls(**params)
        except TypeError as err:
            raise ConfigError(f"task arithmetic: {err}") from None


def task_arithmetic(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, **options) -> torch.Tensor:
    """`base + lambda * mix(w_i * sparsify(x_i - base))`: the core that TIES, DARE and breadcrumbs configure.

    Task arithmetic (Ilharco et al., 2023) adds weighted task vectors to the base. `sparsification` trims each
    task vector first; `consensus="sum"` (TIES, Yadav et al., 2023) elects a sign per entry from the summed
    weighted deltas and keeps only entries that agree, averaged over the models that kept them ("disjoint
    mean"). `options` are the fields of `TaskArithmeticOptions`.
    """
    base = need_base(base, "task_arithmetic")
    check_shapes(tensors, base)
    return next(task_arithmetic_blocks(lambda i, rows: tensors[i], lambda rows: base, [None], len(tensors), **options))


def task_arithmetic_blocks(
    read: Callable[[int, slice | None], torch.Tensor],
    read_base: Callable[[slice | None], torch.Tensor],
    blocks: Sequence[slice | None],
    count: int,
    numel: int | None = None,
    **options,
) -> Iterator[torch.Tensor]:
    """`task_arithmetic` over blocks of rows, for the streaming engine: `read(i, rows)` gives model i's rows
    and `read_base(rows)` the base's; `numel` is the tensor's size. Yields the merged rows of each block."""
    opts = TaskArithmeticOptions.of(options)
    if opts.consensus not in (None, "sum"):
        raise ConfigError(f"unknown consensus {opts.consensus!r}; valid: sum, or none")
    if opts.sparsification == "della" and len(blocks) > 1 and read_base(blocks[0]).ndim < 2:
        blocks = [None]  # DELLA ranks the entries of a row together, and a vector is one row
    weights = per_model("weight", opts.weight, count, 1.0)
    densities = per_model("density", opts.density, count, 1.0)
    gammas = per_model("gamma", opts.gamma, count, 0.01)
    epsilons = per_model("epsilon", opts.epsilon, count, 0.15)
    cached: dict = {}

    def base_rows(rows: slice | None) -> torch.Tensor:
        """The base's rows, read once per block however many task vectors need them."""
        key = None if rows is None else (rows.start, rows.stop)
        if cached.get("key", ...) != key:
            cached["key"], cached["value"] = key, read_base(rows)
        return cached["value"]

    def delta(i: int, rows: slice | None) -> torch.Tensor:
        x, b = read(i, rows), base_rows(rows)
        dtype = compute_dtype([x, b])
        return x.to(dtype) - b.to(dtype)

    vectors = [
        task_vector_blocks(
            lambda rows, i=i: delta(i, rows),
            blocks,
            densities[i],
            opts.sparsification,
            gamma=gammas[i],
            epsilon=epsilons[i],
            rescale=opts.rescale,
            seed=opts.seed * 1_000_003 + i,
            numel=numel,
        )
        for i in range(count)
    ]
    for rows in blocks:
        mixed = _mix([next(vector) for vector in vectors], weights, opts)
        base = base_rows(rows)
        yield (base.to(mixed.dtype) + opts.lambda_ * mixed).to(base.dtype)


def _mix(deltas: list[torch.Tensor], weights: list[float], opts: TaskArithmeticOptions) -> torch.Tensor:
    """The weighted sum of the task vectors, or with a consensus their sign-elected disjoint sum."""
    if opts.consensus is None:
        mixed = torch.zeros_like(deltas[0])
        for w, d in zip(weights, deltas, strict=True):
            mixed.add_(d, alpha=w)
        total = sum(weights)
        if opts.normalize and abs(total) >= 1e-8:
            mixed.div_(total)
        return mixed
    # TIES: the elected sign is that of the sum of the weighted deltas (a zero sum elects +); an entry agrees when
    # its weighted delta is non-zero with that sign. The positive and negative parts are summed apart, so the
    # merge is where(elected +, positive sum, negative sum) without a [models, entries] tensor.
    positive, negative = torch.zeros_like(deltas[0]), torch.zeros_like(deltas[0])
    count_positive = torch.zeros_like(deltas[0]) if opts.normalize else None
    count_negative = torch.zeros_like(deltas[0]) if opts.normalize else None
    for w, d in zip(weights, deltas, strict=True):
        weighted = d * w
        positive.add_(weighted.clamp(min=0))
        negative.add_(weighted.clamp(max=0))
        if opts.normalize:
            count_positive.add_(weighted > 0, alpha=w)
            count_negative.add_(weighted < 0, alpha=w)
        del weighted
    elected = (positive + negative) >= 0
    mixed = torch.where(elected, positive, negative)
    if opts.normalize:
        divisor = torch.where(elected, count_positive, count_negative)
        divisor[divisor == 0] = 1
        mixed.div_(divisor)
    return mixed


def _register(name: str, reference: str, *, fixed: dict | None = None, defaults: dict | None = None) -> None:
    METHODS.register(name)(
        MergeMethod(
            name,
            task_arithmetic,
            base="required",
            # random drops (DARE, DELLA) draw in the tensor's order from one generator, so that blocks of rows
            # draw what the whole tensor would: a seed gives the same merge streamed or in memory
            block_function=task_arithmetic_blocks,
            per_model=("weight", "density", "gamma", "epsilon"),
            fixed=fixed or {},
            defaults=defaults or {},
            options=TaskArithmeticOptions,
            family="task_arithmetic",
            reference=reference,
        )
    )


_register("task_arithmetic", "Ilharco et al., 2023")
_register(
    "ties",
    "TIES-merging (Yadav et al., 2023): magnitude trimming, sign election, disjoint mean",
    fixed={"sparsification": "magnitude", "consensus": "sum"},
    defaults={"normalize": True},
)
_register(
    "dare_ties",
    "DARE (Yu et al., 2024) random drop with rescaling, then TIES sign election",
    fixed={"sparsification": "random", "consensus": "sum"},
    defaults={"rescale": "inverse_density", "normalize": False},
)
_register(
    "dare_linear",
    "DARE (Yu et al., 2024): random drop with rescaling, then a weighted sum",
    fixed={"sparsification": "random", "consensus": None},
    defaults={"rescale": "inverse_density", "normalize": False},
)
_register(
    "breadcrumbs",
    "Model Breadcrumbs (Davari and Belilovsky, 2023): drop the largest and the smallest",
    fixed={"sparsification": "breadcrumbs", "consensus": None},
    defaults={"normalize": False},
)
_register(
    "breadcrumbs_ties",
    "Breadcrumbs sparsification with TIES sign election",
    fixed={"sparsification": "breadcrumbs", "consensus": "sum"},
    defaults={"normalize": False},
)
_register(
    "della",
    "DELLA-Merging (Deep et al., 2024): magnitude-ranked random drop, rescaled, then TIES sign election",
    fixed={"sparsification": "della", "consensus": "sum"},
    defaults={"rescale": "inverse_density", "normalize": True},
)
_register(
    "della_linear",
    "DELLA-Merging (Deep et al., 2024): magnitude-ranked random drop, rescaled, then a weighted sum",
    fixed={"sparsification": "della", "consensus": None},
    defaults={"rescale": "inverse_density", "normalize": False},
)


def _sce_blocks(
    read: Callable[[int, slice | None], torch.Tensor],
    read_base: Callable[[slice | None], torch.Tensor] | None,
    blocks: Sequence[slice | None],
    count: int,
    numel: int | None = None,
    *,
    select_topk: float = 1.0,
    int8_mask: bool = False,
) -> Iterator[torch.Tensor]:
    """`sce` block by block: a pass counting the entries whose task vectors vary and, with `select_topk` < 1,
    passes finding the variance threshold (as TIES' trimming finds its, never holding the whole variance);
    a pass summing each masked task vector's squares; then each block."""
    read_base = need_base(read_base, "sce")
    out_dtype = read_base(blocks[0]).dtype

    def vectors(rows: slice | None) -> torch.Tensor:  # [K, rows...]
        return torch.stack(model_rows(read, read_base, count, rows, offsets=True)[0])

    def variance(rows: slice | None) -> torch.Tensor:
        return vectors(rows).var(dim=0, unbiased=False)

    cut = None
    if select_topk < 1:
        entries = numel if numel is not None else variance(blocks[0]).numel()
        kept = int(sum(int(torch.count_nonzero(variance(rows))) for rows in blocks) * select_topk)
        if len(blocks) == 1:
            cut = _Cut.of(variance(blocks[0]), kept)
        else:
            sample = _row_sample(variance, blocks)
            cut = _Cut.streamed(lambda: (variance(rows) for rows in blocks), sample, entries, kept)

    def selected() -> Iterator[torch.Tensor]:  # each block's task vectors, outside the selection zeroed
        mask = copy.copy(cut)  # a cut takes its tied entries in order: a fresh one for each pass
        for rows in blocks:
            stacked = vectors(rows)
            if mask is not None:
                stacked = stacked * mask.mask(stacked.var(dim=0, unbiased=False)).to(stacked.dtype)
            yield stacked

    squares, entries = torch.zeros(count, dtype=torch.float64), 0
    for stacked in selected():
        squares += stacked.double().square().reshape(count, -1).sum(1)
        entries += stacked[0].numel()
    mean_square = squares / max(entries, 1)
    total = float(mean_square.sum())
    weights = torch.full_like(mean_square, 1 / count) if abs(total) < 1e-6 else mean_square / total
    for rows, stacked in zip(blocks, selected(), strict=True):
        elected = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0).to(stacked.dtype)
        agree = weights.to(stacked.dtype).reshape(-1, *[1] * (stacked.ndim - 1)) * (stacked.sign() == elected)
        merged = (stacked * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1e-6)
        yield (model_rows(read, read_base, 0, rows)[1] + merged).to(out_dtype)


@register_method(
    "sce",
    base="required",
    block_function=_sce_blocks,
    reference="Wan et al., 2024, FuseChat (arXiv:2408.07990); mergekit",
)
def sce(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    *,
    select_topk: Annotated[Share, Field(description="the share of entries selected")] = 1.0,
    int8_mask: Flag = False,
) -> torch.Tensor:
    """Select, Calculate, Erase: keep the `select_topk` share of entries whose task vectors vary most across
    the models, weigh each task vector by its mean square, keep only entries agreeing with the elected sign
    (TIES), and add their weighted mean to the base. `int8_mask` is accepted for mergekit's configs."""
    base = need_base(base, "sce")
    check_shapes(tensors, base)
    return whole(_sce_blocks, tensors, base, select_topk=select_topk, int8_mask=int8_mask)
