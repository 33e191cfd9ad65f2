"""Merge methods: pure functions over the K matching tensors of same-architecture models.

Every method has the signature `method(tensors, base=None, **params) -> Tensor`, where `tensors` are the
K models' tensors for one parameter name (same shape), `base` is the base model's tensor where the method
needs one, per-model parameters (`weight`, `density`) are sequences of K values, and the rest are scalars.
Arithmetic runs in float32 (float64 when an input is float64); the result has the first input's dtype.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError, IncompatibleModelsError
from ..registry import Registry

__all__ = [
    "METHODS",
    "MergeMethod",
    "linear",
    "slerp",
    "task_arithmetic",
    "model_stock",
    "sparsify",
    "takes_seed",
    "is_elementwise",
]

MergeMethod = Callable[..., torch.Tensor]
METHODS: Registry[MergeMethod] = Registry("merge method")


def _compute_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _per_model(name: str, values, count: int, default: float | None) -> list[float]:
    """A per-model parameter as K floats: a scalar applies to all, a sequence must have K entries."""
    if values is None:
        if default is None:
            raise ConfigError(f"parameter {name!r} is required for every model")
        return [default] * count
    if isinstance(values, int | float):
        return [float(values)] * count
    values = [float(v) for v in values]
    if len(values) != count:
        raise ConfigError(f"got {len(values)} values of {name!r} for {count} models")
    return values


def _check_shapes(tensors: Sequence[torch.Tensor], base: torch.Tensor | None) -> None:
    shapes = {tuple(t.shape) for t in tensors} | ({tuple(base.shape)} if base is not None else set())
    if len(shapes) > 1:
        raise IncompatibleModelsError(f"tensors to merge have different shapes: {sorted(shapes)}")


def _need_base(base: torch.Tensor | None, method: str) -> torch.Tensor:
    if base is None:
        raise ConfigError(f"merge method {method!r} needs a base model (base_model in the config)")
    return base


@METHODS.register("linear")
def linear(
    tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *, weight=None, normalize: bool = True
) -> torch.Tensor:
    """Weighted average of the models' tensors: `sum(w_i x_i) / sum(w_i)` (Wortsman et al., 2022, "Model soups").

    Args:
        weight: one weight per model (default 1 each).
        normalize: divide by the sum of the weights (mergekit's default); `False` gives `sum(w_i x_i)`.
    """
    _check_shapes(tensors, None)
    weights = _per_model("weight", weight, len(tensors), 1.0)
    if normalize and abs(sum(weights)) < 1e-12:
        raise ConfigError(f"linear merge with normalize: the weights {weights} sum to zero")
    dtype = _compute_dtype(tensors)
    total = torch.mul(tensors[0].to(dtype), weights[0])  # accumulated in place: one output-sized buffer
    for w, t in zip(weights[1:], tensors[1:], strict=True):
        total.add_(t.to(dtype), alpha=w)
    if normalize:
        total.div_(sum(weights))
    return total.to(tensors[0].dtype)


@METHODS.register("slerp")
def slerp(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *, t: float = 0.5) -> torch.Tensor:
    """Spherical linear interpolation from `base` (t=0) to the one other model (t=1) (Shoemake, 1985).

    As mergekit: the whole tensor is one vector; the angle comes from the normalized vectors (norms under
    1e-8 count as 1), and near-parallel or near-opposite tensors (|cos| > 0.9995) fall back to linear
    interpolation. The sine coefficients multiply the original, unnormalized tensors.
    """
    base = _need_base(base, "slerp")
    if len(tensors) != 1:
        raise ConfigError(f"slerp interpolates the base with exactly one other model, got {len(tensors)}")
    _check_shapes(tensors, base)
    dtype = _compute_dtype([base, *tensors])
    v0, v1 = base.to(dtype).reshape(-1), tensors[0].to(dtype).reshape(-1)
    n0, n1 = v0.norm(), v1.norm()
    dot = ((v0 / (n0 if n0 > 1e-8 else 1.0)) * (v1 / (n1 if n1 > 1e-8 else 1.0))).sum().clamp(-1.0, 1.0)
    if abs(float(dot)) > 0.9995:
        result = (1 - t) * v0 + t * v1
    else:
        theta = torch.arccos(dot)
        result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return result.reshape(base.shape).to(base.dtype)


def _keep_top(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest entries, found with a `kthvalue` threshold in linear time (mergekit sorts every
    tensor). Entries tied at the threshold are taken in index order, as a stable descending sort would."""
    n = magnitude.numel()
    if k >= n:
        return torch.ones_like(magnitude, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(magnitude, dtype=torch.bool)
    flat = magnitude.reshape(-1)
    threshold = flat.kthvalue(n - k + 1).values
    mask = flat > threshold
    missing = k - int(mask.sum())
    if missing:
        mask[(flat == threshold).nonzero().flatten()[:missing]] = True
    return mask.reshape(magnitude.shape)


def sparsify(
    delta: torch.Tensor,
    density: float,
    method: str,
    *,
    gamma: float = 0.01,
    rescale: str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero out most of a task vector.

    Args:
        density: share of entries kept.
        method: "magnitude" (TIES: keep the top `density` by |delta|), "random" (DARE: keep each entry with
            probability `density`), "breadcrumbs" (drop the top `gamma` and then the smallest, so that
            `density` remain; Davari and Belilovsky, 2023).
        rescale: None, "inverse_density" (DARE's 1 / density, Yu et al., 2024) or "l1" (restore the L1 norm,
            as mergekit does).
        generator: seeded generator for "random".
    """
    if density >= 1:
        return delta
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    n = delta.numel()
    magnitude = delta.abs()
    if method == "magnitude":
        mask = _keep_top(magnitude, max(1, int(density * n)))
    elif method == "random":
        mask = torch.rand(delta.shape, generator=generator, dtype=torch.float64) < density
    elif method == "breadcrumbs":
        keep = int(n * density)
        top = int(n * gamma)
        bottom = n - keep - top
        if bottom < 0:
            bottom, top = 0, n - keep
        mask = _keep_top(magnitude, n - bottom) & ~_keep_top(magnitude, top)
    else:
        raise ConfigError(f"unknown sparsification {method!r}; valid: magnitude, random, breadcrumbs")
    kept = delta * mask
    if rescale == "inverse_density":
        kept = kept / density
    elif rescale == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        if before >= 1e-8 and after >= 1e-8:
            kept = kept * (before / after)
    elif rescale is not None:
        raise ConfigError(f"unknown rescale {rescale!r}; valid: inverse_density, l1, or none")
    return kept


@METHODS.register("task_arithmetic")
def task_arithmetic(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    *,
    weight=None,
    density=None,
    lambda_: float = 1.0,
    normalize: bool = False,
    sparsification: str | None = None,
    consensus: str | None = None,
    gamma: float = 0.01,
    rescale: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """`base + lambda * mix(w_i * sparsify(x_i - base))`: the core that TIES, DARE and breadcrumbs configure.

    Task arithmetic (Ilharco et al., 2023) adds weighted task vectors to the base. `sparsification` trims each
    task vector first; `consensus="sum"` (TIES, Yadav et al., 2023) elects a sign per entry from the summed
    weighted deltas and keeps only entries that agree, averaged over the models that kept them ("disjoint
    mean"). `normalize` divides by the sum of the weights (of the agreeing models, with a consensus).
    """
    base = _need_base(base, "task_arithmetic")
    _check_shapes(tensors, base)
    count = len(tensors)
    weights = torch.tensor(_per_model("weight", weight, count, 1.0))
    densities = _per_model("density", density, count, 1.0)
    dtype = _compute_dtype([base, *tensors])
    base_c = base.to(dtype)
    generator = torch.Generator().manual_seed(seed) if sparsification == "random" else None
    if consensus is None and sparsification is None:
        # Plain task arithmetic needs no stack of K deltas: accumulate w_i (x_i - base) in place.
        mixed = torch.zeros_like(base_c)
        for w, x in zip(weights.tolist(), tensors, strict=True):
            mixed.add_(x.to(dtype) - base_c, alpha=w)
        if normalize and abs(float(weights.sum())) >= 1e-8:
            mixed.div_(float(weights.sum()))
        return mixed.mul_(lambda_).add_(base_c).to(base.dtype)
    deltas = torch.stack(
        [
            sparsify(x.to(dtype) - base_c, d, sparsification, gamma=gamma, rescale=rescale, generator=generator)
            if sparsification
            else x.to(dtype) - base_c
            for x, d in zip(tensors, densities, strict=True)
        ]
    )  # [K, ...]
    weights = weights.to(dtype).reshape(count, *([1] * base.ndim))
    weighted = deltas * weights
    if consensus == "sum":
        # An entry agrees when it is non-zero with the elected sign (a zero sum elects +).
        positive = weighted.sum(dim=0) >= 0
        agree = torch.where(positive, weighted > 0, weighted < 0)
        mixed = torch.where(agree, weighted, 0).sum(dim=0)
        divisor = (weights * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    elif consensus is None:
        mixed = weighted.sum(dim=0)
        divisor = weights.sum(dim=0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    else:
        raise ConfigError(f"unknown consensus {consensus!r}; valid: sum, or none")
    if normalize:
        mixed = mixed / divisor
    return (base_c + lambda_ * mixed).to(base.dtype)


def _variant(name: str, doc: str, **fixed) -> None:
    """Register a configured `task_arithmetic` under `name` (variants share the core, not copies of it)."""
    defaults = {k: v for k, v in fixed.items() if k in ("normalize", "rescale")}
    locked = {k: v for k, v in fixed.items() if k not in defaults}

    def method(tensors, base=None, **params):
        for key in locked:
            if key in params:
                raise ConfigError(
                    f"merge method {name!r} fixes {key}={locked[key]!r}; use task_arithmetic to change it"
                )
        return task_arithmetic(tensors, base, **{**defaults, **params, **locked})

    method.__name__ = name
    method.__doc__ = doc
    signature = inspect.signature(task_arithmetic)
    method.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name not in locked]
    )
    METHODS.register(name)(method)


_variant(
    "ties",
    "TIES-merging (Yadav et al., 2023): magnitude trimming, sign election, disjoint mean.",
    sparsification="magnitude",
    consensus="sum",
    normalize=True,
)
_variant(
    "dare_ties",
    "DARE (Yu et al., 2024) random drop with rescaling, then TIES sign election.",
    sparsification="random",
    consensus="sum",
    rescale="inverse_density",
    normalize=False,
)
_variant(
    "dare_linear",
    "DARE (Yu et al., 2024): random drop with rescaling, then a weighted sum.",
    sparsification="random",
    consensus=None,
    rescale="inverse_density",
    normalize=False,
)
_variant(
    "breadcrumbs",
    "Model Breadcrumbs (Davari and Belilovsky, 2023): drop the largest and the smallest.",
    sparsification="breadcrumbs",
    consensus=None,
    normalize=False,
)
_variant(
    "breadcrumbs_ties",
    "Breadcrumbs sparsification with TIES sign election.",
    sparsification="breadcrumbs",
    consensus="sum",
    normalize=False,
)


@METHODS.register("model_stock")
def model_stock(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None) -> torch.Tensor:
    """Model Stock (Jang et al., 2024): move from the base toward the average of the fine-tunes by
    `t = N cos / (1 + (N - 1) cos)`, cos the mean pairwise cosine of their offsets from the base."""
    base = _need_base(base, "model_stock")
    if len(tensors) < 2:
        raise ConfigError(f"model_stock needs at least 2 models besides the base, got {len(tensors)}")
    _check_shapes(tensors, base)
    dtype = _compute_dtype([base, *tensors])
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


def takes_seed(method: MergeMethod) -> bool:
    """Whether a method draws random numbers (and so takes a `seed`)."""
    return "seed" in inspect.signature(method).parameters


def is_elementwise(name: str, params: dict) -> bool:
    """Whether each output entry depends only on the same entry of the inputs, so a tensor can be merged a
    block of rows at a time (SLERP, model stock and sparsified task vectors need whole-tensor statistics)."""
    if name == "linear":
        return True
    return name == "task_arithmetic" and not params.get("sparsification") and not params.get("consensus")
