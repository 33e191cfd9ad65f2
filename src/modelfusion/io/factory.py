"""Model factories, and loading a state dict into the model they build.

A checkpoint may only *name* a factory registered in `modelfusion.models.MODELS`, with keyword arguments
that are plain JSON data checked against the factory's signature: nothing in a file decides which code runs.
Any other factory (`package.module:function` or a callable) is the caller's choice, given as `factory=`.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import CheckpointError, ModelFusionError, first_line
from ..models import MODELS

__all__ = [
    "resolve_factory",
    "build_model",
    "build_named_model",
    "factory_name",
    "check_state_dict",
    "load_state_dict_checked",
]

MAX_LISTED = 5
# Bounds on the arguments a file may pass: enough for any layer list, too little to stall the factory.
MAX_ARGUMENT_ITEMS = 4096
MAX_STRING_CHARS = 1024
MAX_NESTING = 4
# Building a model may allocate more than the file holds (a spliced model's backbone is built whole, then cut;
# a compressed model's original is built in float32, then shrunk and quantized), but not without bound: at
# most this many times the bytes of the file's tensors, plus the slack.
MAX_BUILD_EXPANSION = 16
BUILD_SLACK_BYTES = 256 * 2**20


class _Allocations(TorchDispatchMode):
    """Counts the bytes of every new tensor made while active (views and in-place results are not new): on
    the meta device, what building a model would allocate, without allocating it."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for returned, value in zip(func._schema.returns, out if isinstance(out, tuple) else (out,), strict=False):
            if returned.alias_info is None:
                leaves, _ = tree_flatten(value)
                self.bytes += sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
        return out


def factory_name(spec: str | Callable[..., nn.Module] | None) -> str | None:
    """The registry name of `spec` (a registered function, its name, or its `module:function`), else None.

    Files written before the registry named our factories as `modelfusion.models:mlp`; those still resolve.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec in MODELS:
        return spec
    for name, factory in MODELS.registered().items():  # plugins are imported when named, not searched for
        if spec is factory or spec == f"{factory.__module__}:{factory.__qualname__}":
            return name
    return None


def resolve_factory(spec: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The caller's factory: a callable, a registered name, or `"package.module:function"` (imported: only
    call this with a name the caller gave, never with one read from a file)."""
    if callable(spec):
        return spec
    name = factory_name(spec)
    if name is not None:
        return MODELS[name]
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise CheckpointError(
            f"model factory {spec!r} is neither a registered name ({', '.join(MODELS.names())}) nor of the "
            "form 'package.module:function'"
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


def _call(factory: Callable[..., nn.Module], kwargs: Mapping, label: str) -> nn.Module:
    try:
        model = factory(**dict(kwargs))
    except ModelFusionError as err:  # a factory that builds other models from the same file (a spliced one)
        raise CheckpointError(f"model factory {label}: {err}") from None
    except (TypeError, ValueError, RuntimeError, IndexError, OverflowError) as err:
        shown = str(dict(kwargs))[:300]
        raise CheckpointError(f"model factory {label} rejected its arguments {shown}: {first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"model factory {label} returned {type(model).__name__}, not an nn.Module")
    return model


def build_model(spec: str | Callable[..., nn.Module], kwargs: Mapping | None = None) -> nn.Module:
    """Build a model with the caller's factory (see `resolve_factory`) and arguments."""
    return _call(resolve_factory(spec), kwargs or {}, repr(spec))


def _check_plain(value, where: str, depth: int = 0, mapping: bool = False) -> int:
    """Raise unless `value` is JSON data of bounded size (an object only where `mapping`); return its number of
    items."""
    if value is None or isinstance(value, bool | int):
        return 1
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"{where} is {value}; factory arguments must be finite numbers")
        return 1
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise CheckpointError(f"{where} is a string of {len(value)} characters (at most {MAX_STRING_CHARS})")
        return 1
    if depth >= MAX_NESTING or not (isinstance(value, list) or (mapping and isinstance(value, dict))):
        raise CheckpointError(
            f"{where} is a {type(value).__name__}; a file may pass a factory only numbers, strings, booleans "
            f"and lists of them (nested at most {MAX_NESTING} deep; objects only where the factory takes a mapping)"
        )
    items = value.items() if isinstance(value, dict) else enumerate(value)
    count = 1
    for key, item in items:
        if not isinstance(key, str | int):
            raise CheckpointError(f"{where} has a key of type {type(key).__name__}")
        count += _check_plain(item, f"{where}[{key!r}]", depth + 1, mapping)
        if count > MAX_ARGUMENT_ITEMS:
            raise CheckpointError(f"{where} has more than {MAX_ARGUMENT_ITEMS} items")
    return count


def _check_arguments(name: str, factory: Callable, kwargs: Mapping, source: str) -> dict:
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{source}: factory_kwargs must be a JSON object, got {type(kwargs).__name__}")
    parameters = inspect.signature(factory).parameters
    accepted = [
        p.name for p in parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    unknown = sorted(str(k) for k in kwargs if k not in accepted)
    if unknown:
        raise CheckpointError(
            f"{source}: model factory {name!r} takes no arguments {unknown}; it takes {', '.join(accepted)}"
        )
    missing = [p for p in accepted if parameters[p].default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise CheckpointError(f"{source}: model factory {name!r} needs the arguments {missing}")
    total = 0
    for key, value in kwargs.items():
        takes_mapping = any(word in str(parameters[key].annotation) for word in ("Mapping", "dict"))
        total += _check_plain(value, f"{source}: factory argument {key!r}", mapping=takes_mapping)
        if total > MAX_ARGUMENT_ITEMS:
            raise CheckpointError(f"{source}: the factory arguments have more than {MAX_ARGUMENT_ITEMS} items")
    return dict(kwargs)


def build_named_model(
    name: str, kwargs: Mapping | None, source: str, state: Mapping[str, torch.Tensor] | None = None
) -> nn.Module:
    """Build the registered factory a file names, with the file's arguments, defensively.

    The arguments must be JSON data the factory's signature accepts. With `state` (the file's tensors), the
    model is first built on the meta device and checked against `state`, so arguments that would allocate
    more than the file holds (`hidden: [10**9]`) fail before any memory is taken: the model must have the
    file's tensors, and building it (parts built and then dropped included, such as a spliced backbone's
    layers after the cut) may allocate at most `MAX_BUILD_EXPANSION` times their bytes plus
    `BUILD_SLACK_BYTES`.
    """
    registered = factory_name(name) if isinstance(name, str) else None
    if registered is None:
        raise CheckpointError(
            f"{source} names the model factory {name!r}, which is not registered "
            f"({', '.join(MODELS.names())}); if you trust it, "
            f"pass factory={name!r} (CLI: --factory) or register it in modelfusion.models.MODELS"
        )
    factory = MODELS[registered]
    kwargs = _check_arguments(registered, factory, kwargs or {}, source)
    label = f"{registered!r} named by {source}"
    if state is not None:
        with torch.device("meta"), _Allocations() as allocations:
            skeleton = _call(factory, kwargs, label)
        check_state_dict(skeleton, state, source)
        held = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
        allowed = MAX_BUILD_EXPANSION * held + BUILD_SLACK_BYTES
        if allocations.bytes > allowed:
            raise CheckpointError(
                f"{source}: building its model ({registered!r} with the file's arguments) would allocate "
                f"{allocations.bytes:,} bytes for {held:,} bytes of weights (at most {MAX_BUILD_EXPANSION}x + "
                f"{BUILD_SLACK_BYTES // 2**20} MiB); refused. If you trust the file, build the model yourself and "
                "load its weights with load_state_dict"
            )
    return _call(factory, kwargs, label)


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise unless `state` has exactly `model`'s keys and shapes; every mismatch kind is listed by name."""
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


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state` into `model` after checking keys and shapes (`check_state_dict`)."""
    check_state_dict(model, state, source)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()
