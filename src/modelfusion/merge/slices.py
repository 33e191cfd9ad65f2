"""mergekit's config grammar beyond one value per parameter: layer `slices`, gradients and filters.

A parameter's setting is a value, a list of numbers (a gradient, interpolated across the layers of a slice),
or a list of `{filter, value}` conditions whose first match on the tensor's name applies. A slice takes a
range of layers from each of its sources; the output stacks the slices, renumbering the layers from 0
(`passthrough` frankenmerges stack ranges of different models). As in mergekit 0.1.5: inside a slice of n
layers, layer i gets t = i / (n - 1) (t = 1 when n = 1); tensors outside the layers come from the first
slice's sources (embeddings) or the last one's (final norm, output head) with t = 0; a per-model value wins
over the slice's, which wins over the global one.

Layers are found by name (`model.layers.3.mlp...`, `transformer.h.3...`, `encoder.layer.3...`,
`blocks.3...`), so no architecture table is needed. A tensor outside the layers is an embedding when its name
says so (`embed`, `wte`, `wpe`, `word_embeddings`), else it comes after the layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError, IncompatibleModelsError
from .engine import Layout, TensorSource
from .methods import MergeMethod

__all__ = ["evaluate_setting", "is_plain", "SliceSpec", "slice_layout", "layer_of"]

_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|layer|blocks)\.)(?P<index>\d+)\.(?P<rest>.+)$")
_EMBEDDING_HINTS = ("embed", "wte", "wpe", "word_embeddings")


def layer_of(name: str) -> tuple[str, int, str] | None:
    """(prefix, layer index, rest of the name) of a tensor inside a numbered layer, else None."""
    match = _LAYER.match(name)
    return (match["prefix"], int(match["index"]), match["rest"]) if match else None


def is_plain(setting) -> bool:
    """Whether a setting is one value for every tensor (no gradient, no filter)."""
    return isinstance(setting, bool | int | float | str) or setting is None


def evaluate_setting(setting, tensor_name: str, t: float):
    """The value of `setting` for the tensor `tensor_name` at the relative layer position `t` in [0, 1]."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if is_plain(setting):
        return setting
    if not setting:
        return None
    if all(is_plain(v) for v in setting):
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in setting)
        if not numeric:
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        low = int(scaled)
        high = min(len(setting) - 1, low + 1)
        return (1 - (scaled - low)) * setting[low] + (scaled - low) * setting[high]
    for condition in setting:
        if not isinstance(condition, Mapping) or "value" not in condition:
            raise ConfigError(f"a parameter's conditions are {{filter, value}} mappings, got {str(condition)[:80]}")
        wanted = condition.get("filter")
        if wanted is None or wanted == "*" or wanted in tensor_name:
            return evaluate_setting(condition["value"], tensor_name, t)
    return None


@dataclass(frozen=True)
class SliceSource:
    """One source of a slice: a checkpoint (its index among the merge's), a layer range [start, end) (None:
    every layer) and its own parameter settings."""

    checkpoint: int
    start: int | None = None
    end: int | None = None
    settings: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSpec:
    sources: Sequence[SliceSource]
    settings: Mapping = field(default_factory=dict)


def slice_layout(
    slices: Sequence[SliceSpec], base: int | None, method: MergeMethod, settings: Mapping, labels: Sequence[str]
) -> tuple[Layout, list[int]]:
    """The engine's layout for `slices` (checkpoint `base` is the base, when the method uses one), and a
    one-element list that receives the output's layer count once the layout has run."""
    layer_count: list[int] = []

    def layout(inventories: list[Mapping]) -> list[TensorSource]:
        pre, layers, post = [], [], []
        offset = 0
        for number, spec in enumerate(slices):
            first = spec.sources[0]
            count = _layer_count(spec, inventories, labels, number, method)
            prefix, rests = _layer_names(inventories[first.checkpoint], labels[first.checkpoint])
            start = first.start or 0
            for step in range(count):
                t = step / (count - 1) if count > 1 else 1.0
                for rest in rests.get(start + step, []):
                    out = f"{prefix}{offset + step}.{rest}"
                    sources = [(s, f"{prefix}{(s.start or 0) + step}.{rest}") for s in spec.sources]
                    layers.append(_tensor(out, sources, spec, base, method, settings, t, labels))
            offset += count
            for name in inventories[first.checkpoint]:  # outside the layers: from the first or the last slice
                early = any(hint in name for hint in _EMBEDDING_HINTS)
                if layer_of(name) is None and number == (0 if early else len(slices) - 1):
                    tensor = _tensor(name, [(s, name) for s in spec.sources], spec, base, method, settings, 0, labels)
                    (pre if early else post).append(tensor)
        layer_count[:] = [offset]
        return pre + layers + post

    return layout, layer_count


def _layer_count(spec: SliceSpec, inventories, labels, number: int, method: MergeMethod) -> int:
    counts = []
    for source in spec.sources:
        available = len(_layer_names(inventories[source.checkpoint], labels[source.checkpoint])[1])
        start, end = source.start or 0, available if source.end is None else source.end
        if not 0 <= start < end <= available:
            raise ConfigError(
                f"slice {number}: layer_range [{start}, {end}] of {labels[source.checkpoint]} is outside its "
                f"{available} layers"
            )
        counts.append(end - start)
    if len(set(counts)) > 1:
        raise ConfigError(f"slice {number}: its sources cover different numbers of layers {counts}; give equal ranges")
    if method.name == "passthrough" and len(spec.sources) != 1:
        raise ConfigError(f"slice {number}: passthrough takes one source per slice, got {len(spec.sources)}")
    return counts[0]


def _layer_names(inventory: Mapping, label: str) -> tuple[str, dict[int, list[str]]]:
    """The layers' name prefix and, per layer index, the rest of its tensors' names."""
    prefixes, rests = set(), {}
    for name in inventory:
        found = layer_of(name)
        if found is not None:
            prefixes.add(found[0])
            rests.setdefault(found[1], []).append(found[2])
    if len(prefixes) != 1:
        raise IncompatibleModelsError(
            f"{label}: slices and gradients need numbered layers (names like model.layers.0.*), found "
            f"{'none' if not prefixes else sorted(prefixes)}; give each parameter one value"
        )
    return prefixes.pop(), rests


def _tensor(name, sources, spec: SliceSpec, base, method: MergeMethod, settings, t: float, labels) -> TensorSource:
    """One output tensor: its base and models among the slice's sources, and its parameters at `t`."""
    base_source = next(((s, n) for s, n in sources if s.checkpoint == base), None) if method.base != "none" else None
    if method.base == "required" and base_source is None:
        raise ConfigError(f"merge method {method.name!r} needs the base model among every slice's sources")
    models = [(s, n) for s, n in sources if base_source is None or s is not base_source[0]]
    if not models:
        raise ConfigError(f"{name}: its slice has no model to merge besides the base; add a source")
    params = {}
    for key, setting in {**settings, **spec.settings}.items():
        params[key] = evaluate_setting(setting, name, t)
    for key in method.per_model:
        per_source = [evaluate_setting(s.settings.get(key), name, t) for s, _ in models]
        if all(v is None for v in per_source):
            continue
        fallback = params.get(key)
        if fallback is None and None in per_source:
            missing = [labels[s.checkpoint] for (s, _), v in zip(models, per_source, strict=True) if v is None]
            raise ConfigError(f"parameter {key!r} is set for some models but not for {missing} (tensor {name})")
        params[key] = [fallback if v is None else v for v in per_source]
    params = {k: v for k, v in params.items() if v is not None}
    return TensorSource(
        name,
        tuple((s.checkpoint, n) for s, n in models),
        (base_source[0].checkpoint, base_source[1]) if base_source is not None else None,
        params,
    )
