"""Merge methods: pure functions over the K matching tensors of same-architecture models.

Every method has the signature `method(tensors, base=None, **params) -> Tensor`, where `tensors` are the
K models' tensors for one parameter name (same shape), `base` is the base model's tensor where the method
needs one, per-model parameters (`weight`, `density`) are sequences of K values, and the rest are scalars.
Arithmetic runs in float32 (float64 when an input is float64); the result has the first input's dtype.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

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
    "check_parameters",
    "task_arithmetic_options",
    "task_arithmetic_blocks",
    "task_vector_blocks",
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


def _kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value, exactly. Large tensors first narrow the search to a band around an estimate
    from a fixed sample (two vectorized passes), then select within the band: much faster than `kthvalue`
    over everything, with the same answer whatever the sample."""
    n = flat.numel()
    if n < 1 << 20:
        return flat.kthvalue(n - k + 1).values
    sample = flat[torch.randint(0, n, (1 << 16,), generator=torch.Generator().manual_seed(0))].double()
    quantile = 1 - k / n
    low, high = torch.quantile(
        sample, torch.tensor([max(quantile - 0.01, 0.0), min(quantile + 0.01, 1.0)], dtype=torch.float64)
    )
    above = int((flat > high).sum())
    band = flat[(flat >= low) & (flat <= high)]
    rank = k - above  # the answer's rank from the top inside the band
    if 1 <= rank <= band.numel():
        return band.kthvalue(band.numel() - rank + 1).values
    return flat.kthvalue(n - k + 1).values  # the estimate missed: select over everything


class _Cut:
    """Selects the k largest entries of a tensor that is then seen block by block, in index order.

    A `kthvalue` threshold finds them in linear time (mergekit sorts every tensor); entries tied at the
    threshold are taken in index order, as a stable descending sort would. `mask` is stateful: call it on
    the blocks in order.
    """

    def __init__(self, magnitude: torch.Tensor, k: int) -> None:
        flat = magnitude.reshape(-1)
        n = flat.numel()
        self.keep_all, self.keep_none, self.taken = k >= n, k <= 0, 0
        if not (self.keep_all or self.keep_none):
            self.threshold = _kth_largest(flat, k)
            self.ties = k - int((flat > self.threshold).sum())

    def mask(self, block: torch.Tensor) -> torch.Tensor:
        if self.keep_all or self.keep_none:
            return torch.full_like(block, self.keep_all, dtype=torch.bool)
        mask = block > self.threshold
        if self.taken < self.ties:
            equal = (block.reshape(-1) == self.threshold).nonzero().flatten()[: self.ties - self.taken]
            mask.view(-1)[equal] = True
            self.taken += len(equal)
        return mask


def _selection(magnitude: torch.Tensor | None, density: float, method: str, gamma: float, generator_seed: int):
    """A stateful `block magnitude -> keep mask` for one task vector (see `sparsify`)."""
    if method == "random":
        generator = torch.Generator().manual_seed(generator_seed)
        return lambda block: torch.rand(block.shape, generator=generator, dtype=torch.float64) < density
    n = magnitude.numel()
    if method == "magnitude":
        return _Cut(magnitude, max(1, int(density * n))).mask
    if method == "breadcrumbs":
        keep, top = int(n * density), int(n * gamma)
        bottom = n - keep - top
        if bottom < 0:
            bottom, top = 0, n - keep
        kept, dropped = _Cut(magnitude, n - bottom), _Cut(magnitude, top)
        return lambda block: kept.mask(block) & ~dropped.mask(block)
    raise ConfigError(f"unknown sparsification {method!r}; valid: magnitude, random, breadcrumbs")


def sparsify(
    delta: torch.Tensor,
    density: float,
    method: str,
    *,
    gamma: float = 0.01,
    rescale: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Zero out most of a task vector.

    Args:
        density: share of entries kept.
        method: "magnitude" (TIES: keep the top `density` by |delta|), "random" (DARE: keep each entry with
            probability `density`), "breadcrumbs" (drop the top `gamma` and then the smallest, so that
            `density` remain; Davari and Belilovsky, 2023).
        rescale: None, "inverse_density" (DARE's 1 / density, Yu et al., 2024) or "l1" (restore the L1 norm,
            as mergekit does).
        seed: seed of the "random" draws.
    """
    blocks = task_vector_blocks(lambda rows: delta, [None], density, method, gamma=gamma, rescale=rescale, seed=seed)
    return next(blocks)


def task_vector_blocks(
    read_delta: Callable[[slice | None], torch.Tensor],
    blocks: Sequence[slice | None],
    density: float,
    method: str | None,
    *,
    gamma: float = 0.01,
    rescale: str | None = None,
    seed: int = 0,
    numel: int | None = None,
) -> Iterator[torch.Tensor]:
    """One sparsified task vector, block by block: `read_delta(rows)` gives its rows (None: all of it);
    `numel`, the size of the whole tensor, is needed when there is more than one block.

    Selections that rank magnitudes see the whole |delta| once (built block by block, one tensor in memory),
    then every block is masked with the same thresholds, so the result does not depend on the blocks.
    """
    if method is None or density >= 1:
        yield from (read_delta(rows) for rows in blocks)
        return
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    if rescale not in (None, "inverse_density", "l1"):
        raise ConfigError(f"unknown rescale {rescale!r}; valid: inverse_density, l1, or none")
    magnitude = None
    if method != "random":
        if len(blocks) == 1:
            magnitude = read_delta(blocks[0]).abs().reshape(-1)
        else:  # filled block by block into one buffer: no list of parts to concatenate
            start = 0
            for rows in blocks:
                part = read_delta(rows).abs().reshape(-1)
                if magnitude is None:
                    magnitude = torch.empty(numel, dtype=part.dtype)
                magnitude[start : start + part.numel()] = part
                start += part.numel()
    scale = 1.0 / density if rescale == "inverse_density" else 1.0
    if rescale == "l1":
        select = _selection(magnitude, density, method, gamma, seed)
        before = after = 0.0
        for rows in blocks:
            block = read_delta(rows).abs()
            before += float(block.sum())
            after += float((block * select(block)).sum())
        scale = before / after if before >= 1e-8 and after >= 1e-8 else 1.0
    select = _selection(magnitude, density, method, gamma, seed)
    del magnitude
    for rows in blocks:
        delta = read_delta(rows)
        kept = delta * select(delta.abs())
        yield kept * scale if scale != 1.0 else kept


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
    blocks = task_arithmetic_blocks(
        lambda i, rows: tensors[i],
        lambda rows: base,
        [None],
        len(tensors),
        weight=weight,
        density=density,
        lambda_=lambda_,
        normalize=normalize,
        sparsification=sparsification,
        consensus=consensus,
        gamma=gamma,
        rescale=rescale,
        seed=seed,
    )
    return next(blocks)


def task_arithmetic_blocks(
    read: Callable[[int, slice | None], torch.Tensor],
    read_base: Callable[[slice | None], torch.Tensor],
    blocks: Sequence[slice | None],
    count: int,
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
    numel: int | None = None,
) -> Iterator[torch.Tensor]:
    """`task_arithmetic` over blocks of rows, for the streaming engine: `read(i, rows)` gives model i's rows
    and `read_base(rows)` the base's; `numel` is the tensor's size. Yields the merged rows of each block."""
    if consensus not in (None, "sum"):
        raise ConfigError(f"unknown consensus {consensus!r}; valid: sum, or none")
    weights = _per_model("weight", weight, count, 1.0)
    densities = _per_model("density", density, count, 1.0)
    cached: dict = {}

    def base_rows(rows: slice | None) -> torch.Tensor:
        """The base's rows, read once per block however many task vectors need them."""
        key = None if rows is None else (rows.start, rows.stop)
        if cached.get("key", ...) != key:
            cached["key"], cached["value"] = key, read_base(rows)
        return cached["value"]

    def delta(i: int, rows: slice | None) -> torch.Tensor:
        x, b = read(i, rows), base_rows(rows)
        dtype = _compute_dtype([x, b])
        return x.to(dtype) - b.to(dtype)

    vectors = [
        task_vector_blocks(
            lambda rows, i=i: delta(i, rows),
            blocks,
            densities[i],
            sparsification,
            gamma=gamma,
            rescale=rescale,
            seed=seed * 1_000_003 + i,
            numel=numel,
        )
        for i in range(count)
    ]
    total = sum(weights)
    for rows in blocks:
        deltas = [next(vector) for vector in vectors]
        base = base_rows(rows)
        if consensus is None:
            mixed = torch.zeros_like(deltas[0])
            for w, d in zip(weights, deltas, strict=True):
                mixed.add_(d, alpha=w)
            if normalize and abs(total) >= 1e-8:
                mixed.div_(total)
        else:
            w = torch.tensor(weights, dtype=deltas[0].dtype).reshape(count, *([1] * deltas[0].ndim))
            weighted = torch.stack(deltas) * w
            # An entry agrees when it is non-zero with the elected sign (a zero sum elects +).
            positive = weighted.sum(dim=0) >= 0
            agree = torch.where(positive, weighted > 0, weighted < 0)
            mixed = torch.where(agree, weighted, 0).sum(dim=0)
            if normalize:
                divisor = (w * agree).sum(dim=0)
                divisor[divisor == 0] = 1
                mixed = mixed / divisor
        yield (base.to(mixed.dtype) + lambda_ * mixed).to(base.dtype)


def _variant(name: str, doc: str, **fixed) -> None:
    """Register a configured `task_arithmetic` under `name` (variants share the core, not copies of it)."""
    defaults = {k: v for k, v in fixed.items() if k in ("normalize", "rescale")}
    locked = {k: v for k, v in fixed.items() if k not in defaults}

    def resolve(params: dict) -> dict:
        for key in locked:
            if key in params:
                raise ConfigError(
                    f"merge method {name!r} fixes {key}={locked[key]!r}; use task_arithmetic to change it"
                )
        return {**defaults, **params, **locked}

    def method(tensors, base=None, **params):
        return task_arithmetic(tensors, base, **resolve(params))

    method.__name__ = name
    method.__doc__ = doc
    method.task_arithmetic_options = resolve
    signature = inspect.signature(task_arithmetic)
    method.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name not in locked]
    )
    METHODS.register(name)(method)


task_arithmetic.task_arithmetic_options = dict


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


PER_MODEL_PARAMETERS = ("weight", "density")
# Parameters the engine passes itself, never the user.
_INTERNAL_PARAMETERS = ("tensors", "base", "seed")


def _finite_number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return number


def check_parameters(name: str, params: Mapping, num_models: int) -> None:
    """Raise a ConfigError naming the parameter unless every one is known to method `name` and of its type.

    Per-model parameters (`weight`, `density`) are a number or a list of `num_models` numbers; the others take
    the type of their annotation (number, boolean, or name). Numbers must be finite.
    """
    parameters = inspect.signature(METHODS[name]).parameters
    accepted = [p for p in parameters if p not in _INTERNAL_PARAMETERS]
    for key, value in params.items():
        if key not in accepted:
            takes = ", ".join(p.rstrip("_") for p in accepted) or "no parameters"  # lambda_ is YAML's lambda
            raise ConfigError(f"merge method {name!r} has no parameter {key!r}; it takes {takes}")
        where = f"parameter {key.rstrip('_')!r} of {name!r}"
        annotation = str(parameters[key].annotation)
        if key in PER_MODEL_PARAMETERS:
            values = value if isinstance(value, list | tuple) else [value]
            if isinstance(value, list | tuple) and len(values) != num_models:
                raise ConfigError(f"{where} has {len(values)} values for {num_models} models")
            for v in values:
                number = _finite_number(v, where)
                if key == "density" and not 0 < number <= 1:
                    raise ConfigError(f"{where} is the share of entries kept: from 0 (excluded) to 1, got {v!r}")
        elif "bool" in annotation:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
        elif "float" in annotation:
            number = _finite_number(value, where)
            if key == "gamma" and not 0 <= number < 1:
                raise ConfigError(f"{where} is the share of the largest entries dropped: from 0 to 1, got {value!r}")
        elif "str" in annotation and value is not None and not isinstance(value, str):
            raise ConfigError(f"{where} must be a name, got {type(value).__name__} {value!r}")


def task_arithmetic_options(method: MergeMethod, params: dict) -> dict | None:
    """The full `task_arithmetic` arguments behind a method of that family (None for other methods)."""
    resolve = getattr(method, "task_arithmetic_options", None)
    return resolve(params) if resolve is not None else None
