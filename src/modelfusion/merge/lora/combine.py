"""Merging LoRA adapters of one base model into one adapter, without materializing the base or merged weights.

A weighted sum of low-rank updates is exactly low-rank: `sum_i c_i B_i A_i = [c_1 B_1 ... c_K B_K] [A_1; ...;
A_K]`, so linear merging and task arithmetic concatenate the factors (rank `sum r_i`, lossless) and, when a
smaller rank is asked for, cut the product to it through a QR of each factor and an SVD of the small core (the
best approximation, never the [out, in] matrix). Methods that act entry by entry (TIES, DARE, breadcrumbs, DELLA,
TSV-Merge, WUDI, ...) need each update whole: one tensor at a time, the updates are formed, merged as task
vectors by the registered method, and cut back to the rank by SVD (PEFT's `ties_svd`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..._checks import checked
from ...errors import ConfigError, IncompatibleModelsError
from ..methods import METHODS
from ..methods.base import per_model
from ..state_dicts import tensor_seed
from .adapter import LoraAdapter, LowRank, read_adapter, write_adapter
from .low_rank import factorize, truncate_product

__all__ = ["merge_adapters", "AdapterMerge", "ADAPTER_METHODS"]

# Methods whose merge of task vectors does not depend on where the base is: they merge adapters' updates as they
# merge fine-tunes' task vectors (with the base at zero).
_TASK_VECTOR_METHODS = ("tsv", "wudi", "sce", "model_stock")


def _adapter_methods() -> list[str]:
    family = [name for name in METHODS.names() if METHODS[name].family == "task_arithmetic"]
    return ["linear", *family, *(m for m in _TASK_VECTOR_METHODS if m in METHODS)]


ADAPTER_METHODS = _adapter_methods()


@dataclass
class AdapterMerge:
    """The merged adapter, where it was written, and for each tensor the relative Frobenius error of cutting its
    merged update to the rank (0 where nothing was cut)."""

    adapter: LoraAdapter
    errors: dict[str, float] = field(default_factory=dict)
    exact: bool = True
    path: Path | None = None

    def summary(self) -> str:
        ranks = sorted({u.rank for u in self.adapter.updates.values()})
        worst = max(self.errors.values(), default=0.0)
        how = "exactly (concatenated factors)" if self.exact else "one update at a time, cut back by SVD"
        return (
            f"{len(self.adapter.updates)} low-rank updates merged {how}; rank {'/'.join(map(str, ranks))}; "
            f"largest relative error of the rank cut {worst:.2e}"
        )


@checked
def merge_adapters(
    adapters: Sequence[LoraAdapter | str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    method: str = "task_arithmetic",
    rank: int | None = None,
    base: str | os.PathLike | None = None,
    seed: int = 0,
    overwrite: bool = False,
    **params,
) -> AdapterMerge:
    """Merge LoRA adapters of one base model into one adapter.

    Args:
        adapters: PEFT adapter folders (or adapters read with `read_adapter`).
        out_dir: where to write the merged adapter (a PEFT folder); None keeps it in memory.
        method: "linear", "task_arithmetic" (exact, by concatenating factors), or a method that merges task
            vectors: "ties", "dare_ties", "dare_linear", "breadcrumbs", "della", "tsv", "wudi", ... (`ADAPTER_METHODS`).
        rank: the merged adapter's rank (default: the sum of the ranks for the exact methods, lossless; the largest
            rank for the others).
        base: the base model, needed only when an adapter replaces whole tensors (`modules_to_save`).
        seed: seed of the random methods (DARE, DELLA), per tensor.
        params: the method's parameters (`weight`, `density`, `lambda_`, ...), per-model ones as K values.

    Example:
        >>> merge_adapters(["lora_math", "lora_code"], "lora_merged", method="ties", density=0.5, rank=16)
    """
    if method not in ADAPTER_METHODS:
        METHODS[method]  # an unknown name lists the valid ones
        raise ConfigError(f"merge method {method!r} cannot merge adapters; these can: {', '.join(ADAPTER_METHODS)}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank must be a whole number of at least 1, got {rank!r}")
    loaded = [a if isinstance(a, LoraAdapter) else read_adapter(a) for a in adapters]
    if not loaded:
        raise ConfigError("no adapters to merge")
    merge_method = METHODS[method]
    merge_method.check(params, len(loaded))
    names = _check_same_shapes(loaded)
    coefficients = _exact_coefficients(method, params, len(loaded))
    updates, errors = {}, {}
    for name in names:
        present = [(i, a.updates[name]) for i, a in enumerate(loaded) if name in a.updates]
        width = rank or (sum(u.rank for _, u in present) if coefficients else max(u.rank for _, u in present))
        if coefficients is not None:
            product = LowRank(
                torch.cat([u.left * coefficients[i] for i, u in present], dim=1),
                torch.cat([u.right for _, u in present], dim=0),
            )
            updates[name], errors[name] = truncate_product(product, width)
        else:
            shape = present[0][1].shape
            deltas = [a.updates[name].delta() if name in a.updates else torch.zeros(shape) for a in loaded]
            merged = _merge_task_vectors(merge_method, deltas, params, seed, name)
            updates[name], errors[name] = factorize(merged, width, seed=seed)
    bias = {}
    for name in sorted({n for a in loaded for n in a.bias}):
        deltas = [
            a.bias.get(name, torch.zeros_like(next(b.bias[name] for b in loaded if name in b.bias))) for a in loaded
        ]
        bias[name] = _merge_task_vectors(merge_method, deltas, params, seed, name, coefficients)
    full = _merged_full_tensors(loaded, base, merge_method, params, seed, coefficients)
    first = loaded[0]
    layouts = {name: next(a.layouts[name] for a in loaded if name in a.layouts) for name in updates}
    adapter = LoraAdapter(updates, layouts, full, bias, first.config)
    result = AdapterMerge(adapter, errors, exact=coefficients is not None)
    if out_dir is not None:
        inputs = [a.path for a in loaded if a.path is not None] + ([base] if base is not None else [])
        result.path = write_adapter(adapter, out_dir, overwrite=overwrite, inputs=inputs)
    return result


def _check_same_shapes(adapters: list[LoraAdapter]) -> list[str]:
    """Every updated tensor's name, in first-seen order, after checking that adapters agree on its shape and
    layout (they adapt one base)."""
    seen: dict[str, tuple] = {}
    problems = []
    for index, adapter in enumerate(adapters):
        for name, update in adapter.updates.items():
            key = (update.shape, adapter.layouts[name])
            if seen.setdefault(name, key) != key:
                problems.append(f"{name}: {seen[name]} in one adapter, {key} in adapter {index}")
    if problems:
        raise IncompatibleModelsError(f"the adapters do not adapt one base model: {'; '.join(problems[:5])}")
    return list(seen)


def _exact_coefficients(method: str, params: Mapping, count: int) -> list[float] | None:
    """Each adapter's factor when the merge is a weighted sum of the updates (linear, plain task arithmetic),
    else None."""
    resolved = METHODS[method].resolve(params)
    weights = per_model("weight", resolved.get("weight"), count, 1.0)
    if method == "linear":
        total = sum(weights) if resolved.get("normalize", True) else 1.0
        if abs(total) < 1e-12:
            raise ConfigError(f"linear merge with normalize: the weights {weights} sum to zero")
        return [w / total for w in weights]
    densities = per_model("density", resolved.get("density"), count, 1.0)
    if method != "task_arithmetic" or resolved.get("sparsification") or any(d < 1 for d in densities):
        return None
    total = sum(weights) if resolved.get("normalize") and abs(sum(weights)) >= 1e-8 else 1.0
    return [resolved.get("lambda_", 1.0) * w / total for w in weights]


def _merge_task_vectors(method, deltas, params, seed: int, name: str, coefficients=None) -> torch.Tensor:
    if coefficients is not None:
        return sum(c * d.float() for c, d in zip(coefficients, deltas, strict=True))
    zeros = torch.zeros_like(deltas[0], dtype=torch.float32)
    extra = {"seed": tensor_seed(seed, name)} if method.random else {}
    return method([d.float() for d in deltas], zeros, **params, **extra)


def _merged_full_tensors(adapters, base, method, params, seed: int, coefficients) -> dict[str, torch.Tensor]:
    """Tensors the adapters replace whole, merged as task vectors against the base model's (an adapter that does
    not replace one leaves the base's)."""
    names = sorted({n for a in adapters for n in a.full})
    if not names:
        return {}
    if base is None:
        raise ConfigError(
            f"the adapters replace whole tensors ({', '.join(names[:4])}); pass the base model (base=, --base) so "
            "that they merge as changes of it"
        )
    from ..engine import Checkpoint

    checkpoint = Checkpoint(base)
    inventory = checkpoint.inventory()
    full = {}
    for name in names:
        if name not in inventory:
            raise IncompatibleModelsError(f"{base} has no tensor {name}, which an adapter replaces")
        original = checkpoint.read(name)
        deltas = [
            a.full[name].float() - original.float() if name in a.full else torch.zeros(original.shape) for a in adapters
        ]
        merged = _merge_task_vectors(method, deltas, params, seed, name, coefficients)
        full[name] = (original.float() + merged).to(original.dtype)
    return full
