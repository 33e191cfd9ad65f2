"""Merge configs: mergekit's YAML grammar, validated with pydantic.

```yaml
merge_method: ties
base_model: ./base
models:
  - model: ./finetune_a
    parameters: {weight: 1.0, density: [0.3, 0.7]}      # a gradient across the layers
  - model: ./finetune_b
    parameters: {weight: 0.5, density: 0.5}
parameters:
  normalize: true
  lambda: [{filter: mlp, value: 0.8}, {value: 1.0}]     # conditions on the tensor's name
dtype: float32
```

A model may be `MODEL+ADAPTER` (mergekit's syntax): the PEFT LoRA adapter is applied to the model as its
tensors are read. `slices:` (each with `sources: [{model, layer_range: [start, end]}]`) take layer ranges
instead of whole models; `passthrough` stacks them (a frankenmerge) and the output's config.json gets the new
layer count (see `slices.py` for the semantics). Our one extension, for models trained apart: `align: {method:
weight_matching, dataset: digits}` permutes every model into the first one's unit order first.

Not supported yet, each refused with a clear message: `modules` (per-module merges), `tokenizer_source` other
than `base`, `tokenizer` and `chat_template` settings. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._files import read_file
from ..errors import ConfigError
from .align_step import AlignOptions
from .engine import AdaptedModel, Layout
from .methods import METHODS
from .slices import SliceSource, SliceSpec, is_plain, slice_layout

__all__ = ["MergeConfig", "ModelEntry", "SliceEntry", "AlignOptions", "ResolvedMerge", "load_config"]

# mergekit's name for a parameter -> ours, where they differ.
_RENAMED = {"lambda": "lambda_"}
_NOT_YET = {
    "modules": "modules (separate merges per module of a multimodal model) are not supported yet",
    "tokenizer": "tokenizer settings are not supported yet; the base model's tokenizer files are copied",
    "chat_template": "chat_template is not supported yet; the base model's tokenizer files are copied",
}
Scalar = float | int | bool | str
MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_NODES = 100_000


def _a_path(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a model path cannot hold a NUL character")
    return value


ModelPath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_a_path)]


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelPath
    parameters: dict[str, Any] = {}

    @field_validator("parameters")
    @classmethod
    def _settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(value)


class SliceSourceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelPath
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = {}

    @field_validator("parameters")
    @classmethod
    def _settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(value)


class SliceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SliceSourceEntry] = Field(min_length=1)
    parameters: dict[str, Any] = {}

    @field_validator("parameters")
    @classmethod
    def _settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(value)


@dataclass
class ResolvedMerge:
    """A config resolved against its folder: the checkpoints, the base, the parameters, and for slices,
    gradients or filters the layout of every output tensor (None: each model's tensor of the same name)."""

    models: list[Path | AdaptedModel]
    base: Path | AdaptedModel | None
    params: dict
    layout: Layout | None = None
    config_updates: Callable[[], dict] | None = None


class MergeConfig(BaseModel):
    """A merge: method, models, base, parameters and output dtype (and, our extension, `align`)."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str
    models: list[ModelEntry] = []
    slices: list[SliceEntry] = []
    base_model: ModelPath | None = None
    tokenizer_source: Literal["base"] | None = None
    parameters: dict[str, Any] = {}
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    out_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    random_seed: int = Field(0, ge=0, le=2**63 - 1, strict=True)
    shard_size: str | int = "5GB"
    align: AlignOptions | None = None

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        METHODS[value]  # an unknown name raises UnknownNameError listing the valid ones
        return value

    @field_validator("parameters")
    @classmethod
    def _settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(value)

    def resolve(self, root: Path) -> ResolvedMerge:
        """Model paths (relative to the config's folder), the base, the method's keyword arguments, and the
        layout of the output tensors when slices, gradients or filters ask for one."""

        def path(name: str) -> Path | AdaptedModel:
            return model_reference(name, root)

        if bool(self.models) == bool(self.slices):
            raise ConfigError("a merge config lists either models or slices (exactly one of the two)")
        method = METHODS[self.merge_method]
        base = path(self.base_model) if self.base_model else None
        settings = _renamed(self.parameters)
        per_entry = [m.parameters for m in self.models] + [s.parameters for sl in self.slices for s in sl.sources]
        for parameters in per_entry:
            unknown = set(parameters) - set(method.per_model)
            if unknown:
                raise ConfigError(
                    f"per-model parameters {sorted(unknown)} are not supported by {self.merge_method!r}; its "
                    f"per-model parameters are {list(method.per_model)}, others go under the top-level parameters"
                )
        plain = all(is_plain(v) for v in settings.values()) and all(is_plain(v) for p in per_entry for v in p.values())
        if self.models and plain:
            return self._resolve_models(method, base, settings, path)
        return self._resolve_layout(method, base, settings, path)

    def _resolve_models(self, method, base, params, path) -> ResolvedMerge:
        # a method that merges relative to the base does not merge the base with itself
        entries = [m for m in self.models if not (method.base != "none" and base is not None and path(m.model) == base)]
        if not entries:
            raise ConfigError("the config lists no models to merge (besides the base)")
        for key in method.per_model:
            values = [m.parameters.get(key) for m in entries]
            if any(v is not None for v in values):
                if any(v is None for v in values) and key not in params:
                    missing = [m.model for m, v in zip(entries, values, strict=True) if v is None]
                    raise ConfigError(f"parameter {key!r} is set for some models but not for {missing}")
                default = params.pop(key, None)
                params[key] = [default if v is None else v for v in values]
        return ResolvedMerge([path(m.model) for m in entries], base, _mergekit_rescale(params))

    def _resolve_layout(self, method, base, settings, path) -> ResolvedMerge:
        """Slices (or models with gradients or filters, one slice over every layer) as a layout."""
        if self.slices:
            groups = [[(s.model, s.layer_range, s.parameters) for s in sl.sources] for sl in self.slices]
            slice_settings = [_renamed(sl.parameters) for sl in self.slices]
        else:
            entries = [(m.model, None, m.parameters) for m in self.models]
            if base is not None and method.base != "none" and all(path(m) != base for m, _, _ in entries):
                entries.insert(0, (self.base_model, None, {}))
            groups, slice_settings = [entries], [{}]
        models = list(dict.fromkeys(path(m) for group in groups for m, _, _ in group if path(m) != base))
        if method.base != "none" and base is None:
            raise ConfigError(f"merge method {self.merge_method!r} needs base_model")
        index = {p: i for i, p in enumerate(models)}
        base_index = len(models) if base is not None else None
        if base is not None:
            index[base] = base_index
        specs = [
            SliceSpec(
                [
                    SliceSource(index[path(m)], *(r if r is not None else (None, None)), _renamed(p))
                    for m, r, p in group
                ],
                extra,
            )
            for group, extra in zip(groups, slice_settings, strict=True)
        ]
        labels = [str(p) for p in models] + ([str(base)] if base is not None else [])
        layout, count = slice_layout(specs, base_index, method, _mergekit_rescale(settings), labels)

        def layer_count() -> dict:
            return {"num_hidden_layers": count[0]} if self.slices and count else {}

        return ResolvedMerge(models, base, _mergekit_rescale(dict(settings)), layout, layer_count)


def model_reference(name: str, root: Path) -> Path | AdaptedModel:
    """A config's model: a path (relative to `root`), or mergekit's `MODEL+ADAPTER`, a model with a PEFT LoRA
    adapter applied (a path that exists with its '+' is a path)."""

    def located(text: str) -> Path:
        try:
            candidate = Path(text).expanduser()
        except RuntimeError:  # "~user/..." of a user this machine does not know
            raise ConfigError(f"{text}: the home folder of {text.split('/')[0]!r} is unknown here") from None
        return candidate if candidate.is_absolute() else root / candidate

    whole = located(name)
    if "+" not in name or whole.exists():
        return whole
    parts = name.split("+")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"model {name[:200]!r}: give a model and its LoRA adapter as MODEL+ADAPTER, with one '+'")
    return AdaptedModel(located(parts[0]), located(parts[1]))


def _renamed(settings: dict) -> dict:
    return {_RENAMED.get(k, k): v for k, v in settings.items()}


def _mergekit_rescale(params: dict) -> dict:
    """mergekit's `rescale: true` restores the L1 norm; false turns rescaling off."""
    if "rescale" in params and isinstance(params["rescale"], bool):
        params["rescale"] = "l1" if params["rescale"] else None
    return params


def _check_settings(parameters: dict[str, Any]) -> dict[str, Any]:
    """Each setting is a value, a list of values (a gradient), or {filter, value} conditions (one or a list)."""
    for key, setting in parameters.items():
        conditions = setting if isinstance(setting, list) and any(isinstance(c, dict) for c in setting) else None
        if isinstance(setting, dict):
            conditions = [setting]
        for condition in conditions or []:
            if not isinstance(condition, dict) or "value" not in condition or set(condition) - {"filter", "value"}:
                raise ValueError(f"parameter {key!r}: a condition is a mapping with 'value' and optionally 'filter'")
            if condition.get("filter") is not None and not isinstance(condition["filter"], str):
                raise ValueError(f"parameter {key!r}: a condition's filter is part of a tensor name (text)")
            _check_value(key, condition["value"])
        if conditions is None:
            _check_value(key, setting)
    return parameters


def _check_value(key: str, value: Any) -> None:
    plain = (bool, int, float, str)
    if value is None or isinstance(value, plain):
        return
    if isinstance(value, list) and value and all(isinstance(v, plain) for v in value):
        return
    raise ValueError(f"parameter {key!r} must be a value or a list of values (a gradient), got {str(value)[:60]}")


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes the document has once its aliases are expanded (a shared node counts every time)."""
    key = id(node)
    if key in open_nodes:
        raise ConfigError("the YAML refers to itself through an alias (a recursive structure)")
    if key not in memo:
        open_nodes.add(key)
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node)
            children = [item for pair in node.value for item in pair]
        memo[key] = 1 + sum(_expanded_nodes(child, memo, open_nodes) for child in children)
        open_nodes.discard(key)
    return memo[key]


def _refuse_duplicate_keys(mapping: yaml.MappingNode) -> None:
    """YAML loaders keep the last of two equal keys silently (a second `models:` replaces the first): refuse."""
    seen: dict[str, int] = {}
    for key, _ in mapping.value:
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            line = key.start_mark.line + 1
            if key.value in seen:
                raise ConfigError(
                    f"the key {key.value[:60]!r} appears twice (lines {seen[key.value]} and {line}); keep one"
                )
            seen[key.value] = line


def read_yaml(path: Path):
    """The YAML document at `path`, refused before it is built if it is too big or expands too much through
    aliases ("billion laughs")."""
    data = read_file(path, "merge config", MAX_CONFIG_BYTES, error=ConfigError)
    try:
        text = data.decode("utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        nodes = _expanded_nodes(root, {}, set()) if root is not None else 0
        if nodes <= MAX_CONFIG_NODES:
            return yaml.safe_load(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, ValueError, OverflowError) as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise ConfigError(f"{path}: not valid YAML ({reason})") from None
    raise ConfigError(f"{path}: the YAML expands to {nodes:,} values through aliases; refused")


def load_config(path: str | os.PathLike) -> MergeConfig:
    """Read and validate a YAML merge config; every problem is one `ConfigError` naming the field."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a merge config is a mapping with merge_method, models, ...")
    for key, message in _NOT_YET.items():
        if key in raw:
            raise ConfigError(f"{path}: {message}")
    if raw.get("tokenizer_source") not in (None, "base"):
        raise ConfigError(
            f"{path}: tokenizer_source {str(raw['tokenizer_source'])[:60]!r} is not supported yet; 'base' is (the base "
            "model's tokenizer files are copied): a union or another model's vocabulary needs embedding surgery"
        )
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}")
            else:
                problems.append(f"{where}: {error['msg']}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
