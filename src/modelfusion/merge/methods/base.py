"""What a merge method is: a registered object that describes itself to the engine and to configs.

A method's `function(tensors, base=None, **params) -> Tensor` merges the K models' tensors for one parameter
name (same shape); `base` is the base model's tensor where the method needs one. The object around it says
what the engine and a config need to know without asking for the method by name: whether it needs a base,
whether it can be streamed block by block, which parameters are per-model, which are fixed by a variant,
their defaults, and where the method comes from.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import UnionType
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..._checks import explain
from ...errors import ConfigError, IncompatibleModelsError
from ...registry import Registry

__all__ = [
    "MergeMethod",
    "METHODS",
    "register_method",
    "BlockFunction",
    "Finite",
    "Share",
    "Fraction",
    "Positive",
    "Count",
    "Flag",
    "Coefficient",
]

# (read(i, rows), read_base(rows), blocks, count, numel, **params) -> the merged rows of each block
BlockFunction = Callable[..., Iterator[torch.Tensor]]
# Parameters the engine passes itself, never the user.
_INTERNAL_PARAMETERS = ("tensors", "base", "seed")


@dataclass(frozen=True)
class MergeMethod:
    """A merge method and what the engine and configs need to know about it.

    Attributes:
        name: the registered name (a config's `merge_method`).
        function: `function(tensors, base=None, **params) -> Tensor`, pure.
        base: "required" (it merges relative to a base model), "optional" (it uses one when given) or "none"
            (a base is one more model); a config's base listed among the models is dropped unless "none".
        rows_separable: merging a block of rows gives that block of the merge, so the engine streams rows.
        block_function: for methods that need whole-tensor statistics but can still stream rows (TIES ranks
            magnitudes once per tensor), the function the engine streams with.
        streams: whether `block_function` applies to these (resolved) parameters.
        per_model: parameters given once per model (a number for all, or a list of K numbers).
        fixed: parameters a variant fixes; setting them is refused, naming `family`, which leaves them free.
        defaults: defaults that differ from the function's.
        options: a dataclass whose fields are the parameters, for a function that takes them as `**options`.
        family: the method whose variant this is.
        reference: the paper or tool the method follows.
    """

    name: str
    function: Callable[..., torch.Tensor]
    base: str
    rows_separable: bool = False
    block_function: BlockFunction | None = None
    streams: Callable[[Mapping], bool] = lambda params: True
    per_model: tuple[str, ...] = ()
    fixed: Mapping = field(default_factory=dict)
    defaults: Mapping = field(default_factory=dict)
    options: type | None = None
    family: str | None = None
    reference: str = ""

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        """The parameters a user may set, with their defaults (this method's own where it changes them)."""
        if self.options is not None:
            keyword = inspect.Parameter.KEYWORD_ONLY
            declared = {
                f.name: inspect.Parameter(f.name, keyword, default=f.default, annotation=f.type)
                for f in dataclasses.fields(self.options)
            }
        else:
            declared = inspect.signature(self.function).parameters
        return {
            name: p.replace(default=self.defaults.get(name, p.default))
            for name, p in declared.items()
            if name not in _INTERNAL_PARAMETERS and name not in self.fixed
        }

    def __post_init__(self) -> None:
        if self.base not in ("required", "optional", "none"):
            raise ValueError(f"merge method {self.name!r}: base must be 'required', 'optional' or 'none'")

    @property
    def needs_base(self) -> bool:
        return self.base == "required"

    @property
    def random(self) -> bool:
        """Whether it draws random numbers (the engine then passes a per-tensor `seed`)."""
        if self.options is not None:
            return any(f.name == "seed" for f in dataclasses.fields(self.options))
        return "seed" in inspect.signature(self.function).parameters

    def resolve(self, params: Mapping) -> dict:
        """The function's keyword arguments for the user's `params`: this method's defaults, then `params`,
        then what it fixes."""
        for key in self.fixed:
            if key in params:
                raise ConfigError(
                    f"merge method {self.name!r} fixes {key}={self.fixed[key]!r}; use {self.family} to change it"
                )
        return {**self.defaults, **params, **self.fixed}

    def __call__(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, **params) -> torch.Tensor:
        return self.function(tensors, base, **self.resolve(params))

    def blockwise(self, params: Mapping, has_base: bool) -> BlockFunction | None:
        """The block function the engine streams these parameters with, or None."""
        if self.block_function is None or (self.needs_base and not has_base):
            return None
        return self.block_function if self.streams(self.resolve(params)) else None

    def check(self, params: Mapping, num_models: int) -> None:
        """Raise a ConfigError naming the parameter unless every one is known to this method and in its range.

        Each parameter's type and range are declared with it, in the function's signature (or the `options`
        dataclass), as `Annotated` pydantic constraints (`Share`, `Finite`, ...), and checked by a pydantic model
        built from that signature. A per-model parameter is one value or a list of `num_models` values, each
        checked against the type of one value.
        """
        accepted = self.parameters
        unknown = [key for key in params if key not in accepted]
        if unknown:
            takes = ", ".join(p.rstrip("_") for p in accepted) or "no parameters"  # lambda_ is YAML's lambda
            raise ConfigError(f"merge method {self.name!r} has no parameter {unknown[0]!r}; it takes {takes}")
        for key in self.per_model:
            values = params.get(key)
            if isinstance(values, list | tuple):
                if len(values) != num_models:
                    where = f"parameter {key.rstrip('_')!r} of {self.name!r}"
                    raise ConfigError(f"{where} has {len(values)} values for {num_models} models")
                for value in values:
                    self._validate({key: value})
        self._validate({k: v for k, v in params.items() if not (k in self.per_model and isinstance(v, list | tuple))})

    def _validate(self, params: Mapping) -> None:
        try:
            self._schema.model_validate(params)
        except ValidationError as err:
            error = err.errors()[0]
            key = str(error["loc"][0])
            meaning = _description(self._annotations[key])
            where = f"parameter {key.rstrip('_')!r} of {self.name!r}" + (f" ({meaning})" if meaning else "")
            raise ConfigError(explain(error, where)) from None

    @functools.cached_property
    def _annotations(self) -> dict[str, object]:
        """Each parameter a user may set -> its declared type (for a per-model one, the type of one value)."""
        hints = typing.get_type_hints(self.options or self.function, include_extras=True)
        declared = {name: hints.get(name, typing.Any) for name in self.parameters}
        return {name: _one_value(t) if name in self.per_model else t for name, t in declared.items()}

    @functools.cached_property
    def _schema(self) -> type[BaseModel]:
        fields = {name: (annotation, None) for name, annotation in self._annotations.items()}
        return create_model(f"{self.name}_parameters", __config__=ConfigDict(extra="forbid"), **fields)


# -- the types parameters declare: pydantic constraints in `Annotated`, as mergekit declares its parameters --
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Share = Annotated[Finite, Field(gt=0, le=1)]
Fraction = Annotated[Finite, Field(ge=0, le=1)]
Positive = Annotated[Finite, Field(gt=0)]
Count = Annotated[int, Field(strict=True, ge=1)]
Flag = Annotated[bool, Field(strict=True)]
# A number tensors are multiplied by (a model's weight, a scale): within float32's range, the arithmetic's.
Coefficient = Annotated[Finite, Field(ge=-torch.finfo(torch.float32).max, le=torch.finfo(torch.float32).max)]


def _one_value(annotation):
    """The type of one model's value of a per-model parameter declared `X | Sequence[X] | None`."""
    for option in typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, UnionType) else ():
        if option is not type(None) and typing.get_origin(option) not in (list, tuple, collections.abc.Sequence):
            return option | None
    return annotation


def _description(annotation) -> str:
    """The `description` a parameter's type declares (inside `Optional[...]` too), or ""."""
    for metadata in getattr(annotation, "__metadata__", ()):
        if getattr(metadata, "description", None):
            return metadata.description
    return next(filter(None, map(_description, typing.get_args(annotation))), "")


METHODS: Registry[MergeMethod] = Registry("merge method")


def register_method(name: str, *, base: str = "none", **description) -> Callable:
    """Register the decorated function as the merge method `name` (see `MergeMethod` for `description`); the
    function itself is returned unchanged, for direct calls."""

    def decorator(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        METHODS.register(name)(MergeMethod(name, function, base, **description))
        return function

    return decorator


# -- helpers shared by the methods --------------------------------------------------------------------------
def compute_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 when an input is float64, else float32: the arithmetic's precision."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def per_model(name: str, values, count: int, default: float | None) -> list[float]:
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


def check_shapes(tensors: Sequence[torch.Tensor], base: torch.Tensor | None) -> None:
    shapes = {tuple(t.shape) for t in tensors} | ({tuple(base.shape)} if base is not None else set())
    if len(shapes) > 1:
        raise IncompatibleModelsError(f"tensors to merge have different shapes: {sorted(shapes)}")


def need_base(base: torch.Tensor | None, method: str) -> torch.Tensor:
    if base is None:
        raise ConfigError(f"merge method {method!r} needs a base model (base_model in the config)")
    return base
