"""Merging in memory, over state dicts or `nn.Module`s, for models small enough to hold (soups, alignment)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .._checks import checked
from .._deprecation import keyword_only
from ..errors import ConfigError
from .compat import check_compatible, check_finite
from .methods import METHODS

__all__ = ["merge_state_dicts", "tensor_seed"]


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed: random methods give the same tensor the same draws whatever the order of work."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _as_state_dict(model) -> Mapping[str, torch.Tensor]:
    return model.state_dict() if isinstance(model, nn.Module) else model


@keyword_only("method")
@checked
def merge_state_dicts(
    models: Sequence[Mapping[str, torch.Tensor] | nn.Module],
    *,
    method: str,
    base: Mapping[str, torch.Tensor] | nn.Module | None = None,
    allow_nonfinite: bool = False,
    **params,
) -> dict[str, torch.Tensor]:
    """Merge same-architecture state dicts with a method from `METHODS`.

    Floating-point tensors are merged; integer buffers (e.g. BatchNorm's `num_batches_tracked`) are copied
    from the base, or from the first model. Nothing passed in is modified.

    Args:
        models: the K models (state dicts or modules).
        method: a name from `modelfusion.merge.METHODS`.
        base: the base model, for methods that use one (task arithmetic, TIES, DARE, SLERP, model stock).
        allow_nonfinite: return merged tensors that hold NaN or inf instead of refusing them.
        params: the method's parameters; per-model ones (`weight`, `density`) as sequences of K values.

    `method` by position (`merge_state_dicts(models, "linear")`) still works, with a `DeprecationWarning`.

    Example:
        >>> soup = merge_state_dicts([m1, m2, m3], method="linear")
        >>> ties = merge_state_dicts([ft1, ft2], method="ties", base=pretrained, weight=[1, 1], density=0.2)
    """
    merge_method = METHODS[method]
    if not models:
        raise ConfigError("no models to merge; pass at least one state dict or module")
    states = [_as_state_dict(m) for m in models]
    base_state = _as_state_dict(base) if base is not None else None
    labelled = {f"model {i}": s for i, s in enumerate(states)}
    if base_state is not None:
        labelled = {"base": base_state, **labelled}
    check_compatible({k: {n: (tuple(t.shape), str(t.dtype)) for n, t in s.items()} for k, s in labelled.items()})
    seed = params.pop("seed", 0)
    merge_method.check(params, len(states))
    merged = {}
    with torch.no_grad():
        for name, reference in (base_state or states[0]).items():
            if not reference.is_floating_point():
                merged[name] = reference.clone()
                continue
            extra = {"seed": tensor_seed(seed, name)} if merge_method.random else {}
            base_tensor = base_state[name] if base_state is not None else None
            merged[name] = merge_method([s[name] for s in states], base_tensor, **params, **extra)
            if not allow_nonfinite:
                check_finite(name, merged[name], lambda name=name: {label: s[name] for label, s in labelled.items()})
    return merged
