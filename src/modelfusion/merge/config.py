"""Merge configs: the common subset of mergekit's YAML, validated with pydantic.

```yaml
merge_method: ties
base_model: ./base
models:
  - model: ./finetune_a
    parameters: {weight: 1.0, density: 0.5}
  - model: ./finetune_b
    parameters: {weight: 0.5, density: 0.5}
parameters: {normalize: true}
dtype: float32
```

Our one extension, for models trained apart: `align: {method: weight_matching, dataset: digits}` permutes
every model into the first one's unit order first.

Existing mergekit configs with these keys run unchanged. What we do not support yet (`slices`,
per-layer gradients of a parameter, tokenizer surgery) is refused with a clear message; unknown keys are
errors that name the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from .align_step import AlignOptions
from .methods import METHODS

__all__ = ["MergeConfig", "ModelEntry", "AlignOptions", "load_config"]

# mergekit's name for a parameter -> ours, where they differ.
_RENAMED = {"lambda": "lambda_"}
_NOT_YET = {
    "slices": "slices (merging layer ranges of different models) are not supported yet; merge whole models",
    "tokenizer_source": "tokenizer_source is not supported yet; the base model's tokenizer files are copied",
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
    def _scalars_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_scalars(value)


class MergeConfig(BaseModel):
    """A merge: method, models, base, parameters and output dtype (and, our extension, `align`)."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str
    models: list[ModelEntry] = []
    base_model: ModelPath | None = None
    parameters: dict[str, Any] = {}
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    out_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    random_seed: int = Field(0, ge=0, le=2**63 - 1)
    shard_size: str | int = "5GB"
    align: AlignOptions | None = None

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        METHODS[value]  # an unknown name raises UnknownNameError listing the valid ones
        return value

    @field_validator("parameters")
    @classmethod
    def _scalars_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_scalars(value)

    def resolve(self, root: Path) -> tuple[list[Path], Path | None, dict]:
        """Model paths (relative to the config's folder), the base, and the method's keyword arguments."""

        def path(name: str) -> Path:
            candidate = Path(name).expanduser()
            return candidate if candidate.is_absolute() else root / candidate

        method = METHODS[self.merge_method]
        base = path(self.base_model) if self.base_model else None
        # a method that merges relative to the base does not merge the base with itself
        entries = [m for m in self.models if not (method.base != "none" and base is not None and path(m.model) == base)]
        if not entries:
            raise ConfigError("the config lists no models to merge (besides the base)")
        params = {_RENAMED.get(k, k): v for k, v in self.parameters.items()}
        for key in method.per_model:
            values = [m.parameters.get(key) for m in entries]
            if any(v is not None for v in values):
                if any(v is None for v in values) and key not in params:
                    missing = [m.model for m, v in zip(entries, values, strict=True) if v is None]
                    raise ConfigError(f"parameter {key!r} is set for some models but not for {missing}")
                default = params.pop(key, None)
                params[key] = [default if v is None else v for v in values]
        for entry in entries:
            unknown = set(entry.parameters) - set(method.per_model)
            if unknown:
                raise ConfigError(
                    f"model {entry.model}: per-model parameters {sorted(unknown)} are not supported by "
                    f"{self.merge_method!r}; its per-model parameters are {list(method.per_model)}, others go under "
                    "the top-level parameters"
                )
        if "rescale" in params and isinstance(params["rescale"], bool):
            # mergekit's `rescale: true` restores the L1 norm; false turns rescaling off
            params["rescale"] = "l1" if params["rescale"] else None
        return [path(m.model) for m in entries], base, params


def _check_scalars(parameters: dict[str, Any]) -> dict[str, Any]:
    for key, value in parameters.items():
        if isinstance(value, list | dict):
            raise ValueError(
                f"parameter {key!r} has a list or mapping value: gradients and per-tensor filters are not "
                "supported yet; give one number"
            )
    return parameters


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
            children = [item for pair in node.value for item in pair]
        memo[key] = 1 + sum(_expanded_nodes(child, memo, open_nodes) for child in children)
        open_nodes.discard(key)
    return memo[key]


def _read_yaml(path: Path):
    """The YAML document at `path`, refused before it is built if it is too big or expands too much through
    aliases ("billion laughs")."""
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; pass the YAML config file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror}); check its permissions") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(data):,} bytes; a merge config is at most {MAX_CONFIG_BYTES:,}")
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
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a merge config is a mapping with merge_method, models, ...")
    for key, message in _NOT_YET.items():
        if key in raw:
            raise ConfigError(f"{path}: {message}")
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
