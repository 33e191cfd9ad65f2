"""Model factories named as `package.module:function`, and loading a state dict into the model they build."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["resolve_factory", "build_model", "load_state_dict_checked"]

# Factories inside our own package are trusted when a checkpoint names them; any other needs the caller's word.
TRUSTED_FACTORY_PREFIXES = ("modelfusion.",)
MAX_LISTED = 5


def resolve_factory(spec: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Turn `"package.module:function"` into the function it names (callables pass through)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise CheckpointError(
            f"model factory {spec!r} is not of the form 'package.module:function' (e.g. 'modelfusion.models:mlp')"
        )
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CheckpointError(
            f"model factory {spec!r}: cannot import module {module_name!r} ({err}); install it or fix the name"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CheckpointError(f"model factory {spec!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def build_model(spec: str | Callable[..., nn.Module], kwargs: Mapping | None = None) -> nn.Module:
    factory = resolve_factory(spec)
    try:
        model = factory(**dict(kwargs or {}))
    except TypeError as err:
        raise CheckpointError(f"model factory {spec!r} rejected its arguments {dict(kwargs or {})}: {err}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"model factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state` into `model` after checking keys and shapes; every mismatch kind is listed by name."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches: {_listed(wrong_shape)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the factory's {type(model).__name__}: {'; '.join(problems)}. "
            "Check the factory and its arguments (layer sizes, number of classes)"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()
