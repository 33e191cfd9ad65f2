"""Searching a merge's settings on validation data (what mergekit-evolve does with CMA-ES, on the CPU here).

`search_merge(config, data)` tunes each model's per-model parameters of the config's method (`weight`, and
`density` where the method sparsifies), one value per model or one per model and layer group, to maximize a
validation score of the merged model; the config as given is the first point scored, so the result is never
worse on validation. The best settings are written back as a plain merge config (filters for layer groups, as
mergekit reads them) that `modelfusion merge` runs.

Optimizers: CMA-ES (Hansen, 2016; the `cma` package, the `search` extra) or scipy's Powell, both in the unit
box mapped to each parameter's range (weight 0 to 1, as mergekit-evolve; density 0.1 to 1).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from rich.console import Console

from .._atomic import atomic_path, check_output
from ..errors import ConfigError, MissingExtraError
from .config import MergeConfig, load_config, model_reference
from .engine import AdaptedModel, open_checkpoint
from .methods import METHODS
from .slices import layer_of

__all__ = ["search_merge", "search_soup", "SearchResult", "RANGES", "OPTIMIZERS"]

RANGES = {"weight": (0.0, 1.0), "density": (0.1, 1.0)}
OPTIMIZERS = ("cma", "powell")
Score = Callable[[Path], float]


@dataclass
class SearchResult:
    """The best config found, its validation score and the config's own, and the score of every evaluation."""

    config: MergeConfig
    score: float
    start_score: float
    curve: list[dict] = field(default_factory=list)
    settings: dict[str, float] = field(default_factory=dict)
    metric: str = "accuracy"

    def summary(self) -> str:
        return (
            f"{len(self.curve)} merges scored on validation; {self.metric}: {self.start_score:.4f} as given, "
            f"{self.score:.4f} at best (evaluation {max(self.curve, key=lambda p: p['score'])['evaluation']})"
        )

    def yaml(self, where: Path | None = None) -> str:
        """The best config as YAML; model paths relative to the folder `where` when they are inside it."""
        document = self.config.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
        document["merge_method"] = self.config.merge_method
        if where is not None:
            for entry in document.get("models", []):
                entry["model"] = _relative(entry["model"], where)
            if "base_model" in document:
                document["base_model"] = _relative(document["base_model"], where)
        return yaml.safe_dump(document, sort_keys=False)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False, inputs: Sequence = ()) -> Path:
        """The best config at `path` (YAML), and beside it `<name>.search.json`: the curve and the settings
        (`modelfusion.report.figures.search_svg` draws the curve)."""
        path = Path(path)
        curve_json = path.with_suffix(".search.json")
        for output in (path, curve_json):
            check_output(output, kind="file", overwrite=overwrite, inputs=inputs)
        with atomic_path(path) as tmp:
            tmp.write_text(self.yaml(path.resolve().parent))
        summary = {"metric": self.metric, "score": self.score, "start_score": self.start_score}
        with atomic_path(curve_json) as tmp:
            tmp.write_text(json.dumps({**summary, "settings": self.settings, "curve": self.curve}, indent=1) + "\n")
        return path

    def curve_points(self) -> list[dict]:
        """The curve as the report draws it: each merge's validation score and the best so far."""
        return [{"evaluation": p["evaluation"], "value": p["score"], "best": p["best"]} for p in self.curve]


def _relative(model: str, where: Path) -> str:
    try:
        return os.path.relpath(model, where) if Path(model).is_absolute() else model
    except ValueError:  # another drive
        return model


@dataclass(frozen=True)
class _Dimension:
    """One searched number: a per-model parameter of one model, for one group of tensors (None: all)."""

    model: int
    parameter: str
    group: int | None

    def label(self, names: Sequence[str]) -> str:
        where = "" if self.group is None else f", group {self.group}"
        return f"{names[self.model]}: {self.parameter}{where}"


def search_merge(
    config: MergeConfig | str | os.PathLike,
    data=None,
    *,
    score: Score | None = None,
    evaluations: int = 60,
    layer_groups: int = 1,
    metric: Literal["accuracy", "nll"] = "accuracy",
    optimizer: Literal["cma", "powell"] = "cma",
    seed: int = 0,
) -> SearchResult:
    """Tune a merge config's per-model settings on validation data.

    Args:
        config: a merge config (or its YAML) listing `models` (not slices).
        data: a validation split (`X`, `y`); each merged model is loaded as a member (`load_member`) and scored.
        score: instead of `data`, any function of the merged checkpoint's folder, higher is better (a language
            model's negative perplexity on your validation text, say).
        evaluations: merges scored, the config as given included.
        layer_groups: 1 tunes one value per model; G > 1 one per model and group of consecutive numbered layers,
            plus one for the tensors outside the layers (embeddings, head).
        metric: with `data`: "accuracy" or "nll" (negated, so that higher is better).
        optimizer: "cma" (CMA-ES; with one searched number, Powell) or "powell" (scipy).

    Example:
        >>> result = search_merge("ties.yaml", load_dataset("digits").val, evaluations=40)
        >>> result.save("ties.best.yaml")
    """
    root = Path.cwd()
    if not isinstance(config, MergeConfig):
        root = Path(config).resolve().parent
        config = load_config(config)
    if (data is None) == (score is None):
        raise ConfigError("give validation data or a score function (one of the two)")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 2:
        raise ConfigError(f"evaluations must be a whole number of at least 2, got {evaluations!r}")
    if isinstance(layer_groups, bool) or not isinstance(layer_groups, int) or layer_groups < 1:
        raise ConfigError(f"layer_groups must be a whole number of at least 1, got {layer_groups!r}")
    if not config.models or config.slices:
        raise ConfigError("merge-search tunes a config that lists models (slices are not searched yet)")
    config = _absolute(config, root)
    method = METHODS[config.merge_method]
    tuned = [p for p in ("weight", "density") if p in method.per_model]
    if "density" in tuned and method.resolve({}).get("sparsification") is None:
        tuned.remove("density")  # plain task arithmetic reads no density
    entries = [m for m in config.models if not (method.base != "none" and m.model == config.base_model)]
    if not tuned or not entries:
        raise ConfigError(f"merge method {config.merge_method!r} has no per-model weight or density to tune")
    groups = _groups(entries[0].model, layer_groups)
    dimensions = [
        _Dimension(config.models.index(entry), parameter, group)
        for entry in entries
        for parameter in tuned
        for group in ([None] if groups is None else range(len(groups)))
    ]
    scorer = score or _member_score(data, metric)
    start = np.array([_unit(d, config) for d in dimensions])
    curve: list[dict] = []
    best: dict = {}
    with tempfile.TemporaryDirectory(prefix="modelfusion-search-") as folder:

        def objective(x: np.ndarray) -> float:
            candidate = _configured(config, dimensions, np.clip(x, 0, 1), groups)
            value = _scored(candidate, Path(folder) / "merged", scorer)
            best_so_far = max(value, best.get("score", -math.inf))
            curve.append({"evaluation": len(curve), "score": value, "best": best_so_far})
            if value > best.get("score", -math.inf):
                best.update(score=value, config=candidate, x=np.clip(x, 0, 1))
            return -value if math.isfinite(value) else 1e9

        objective(start)
        _optimize(objective, start, evaluations, optimizer, seed, lambda: len(curve))
    names = [Path(str(m.model)).name for m in config.models]
    settings = {d.label(names): _value(d, x) for d, x in zip(dimensions, best["x"], strict=True)}
    return SearchResult(best["config"], best["score"], curve[0]["score"], curve, settings, metric)


def _absolute(config: MergeConfig, root: Path) -> MergeConfig:
    """The config with model paths resolved against its folder (mergekit's `MODEL+ADAPTER` kept as written)."""

    def resolved(name: str) -> str:
        reference = model_reference(name, root)
        return str(reference) if isinstance(reference, AdaptedModel) else str(reference.resolve())

    models = [m.model_copy(update={"model": resolved(m.model)}) for m in config.models]
    base = resolved(config.base_model) if config.base_model else None
    return config.model_copy(update={"models": models, "base_model": base})


def _groups(model: str, count: int) -> list[list[str]] | None:
    """The filters of each group of consecutive numbered layers, then an empty one: the tensors outside the
    layers (the conditions' catch-all); None for one group."""
    if count == 1:
        return None
    names = list(open_checkpoint(model_reference(model, Path.cwd())).inventory())
    layered = [found for found in map(layer_of, names) if found is not None]
    if not layered:
        raise ConfigError(
            f"{model}: layer groups need numbered layers (names like model.layers.0.*), as mergekit's filters do; "
            "search with one group"
        )
    indices, prefix = sorted({found[1] for found in layered}), layered[0][0]
    size = math.ceil(len(indices) / count)
    groups = [[f"{prefix}{i}." for i in indices[start : start + size]] for start in range(0, len(indices), size)]
    return [*groups, []]


def _value(dimension: _Dimension, x: float) -> float:
    low, high = RANGES[dimension.parameter]
    return round(low + float(x) * (high - low), 6)


def _unit(dimension: _Dimension, config: MergeConfig) -> float:
    """Where the config's own value (if it is a plain number) lies in the parameter's range."""
    low, high = RANGES[dimension.parameter]
    own = config.models[dimension.model].parameters.get(dimension.parameter, config.parameters.get(dimension.parameter))
    default = 1.0 if dimension.parameter == "weight" else 0.5
    number = own if isinstance(own, int | float) and not isinstance(own, bool) else default
    return float(np.clip((number - low) / (high - low), 0, 1))


def _configured(config: MergeConfig, dimensions, x: np.ndarray, groups) -> MergeConfig:
    """`config` with each searched parameter set from the unit vector `x` (filters per group of tensors)."""
    per_model: dict[int, dict[str, object]] = {}
    for dimension, unit in zip(dimensions, x, strict=True):
        value = _value(dimension, unit)
        settings = per_model.setdefault(dimension.model, {})
        if dimension.group is None:
            settings[dimension.parameter] = value
            continue
        conditions = settings.setdefault(dimension.parameter, [])
        filters = groups[dimension.group]
        if filters:
            conditions.extend({"filter": f, "value": value} for f in filters)
        else:
            conditions.append({"value": value})
    models = []
    for index, entry in enumerate(config.models):
        parameters = {**entry.parameters, **per_model.get(index, {})}
        for key, setting in parameters.items():  # the catch-all last
            if isinstance(setting, list) and any("filter" not in c for c in setting if isinstance(c, dict)):
                parameters[key] = [c for c in setting if "filter" in c] + [c for c in setting if "filter" not in c]
        models.append(entry.model_copy(update={"parameters": parameters}))
    return config.model_copy(update={"models": models})


def _scored(candidate: MergeConfig, out: Path, scorer: Score) -> float:
    from . import merge

    merge(candidate, out, overwrite=True, progress=False, console=Console(quiet=True))
    return float(scorer(out))


def _member_score(data, metric: str) -> Score:
    if not hasattr(data, "X") or not hasattr(data, "y"):
        raise ConfigError("data must be a split with X and y (e.g. load_dataset('digits').val)")
    if metric not in ("accuracy", "nll"):
        raise ConfigError(f"metric must be 'accuracy' or 'nll', got {metric!r}")

    def scored(folder: Path) -> float:
        from ..io import load_member

        logits = load_member(next(folder.glob("*.safetensors"))).predict(data.X).double()
        if metric == "accuracy":
            return float((logits.argmax(1) == data.y).double().mean())
        return -float(torch.nn.functional.cross_entropy(logits, data.y))

    return scored


class _Budget(Exception):
    """The evaluations are spent."""


def _optimize(objective, start: np.ndarray, evaluations: int, optimizer: str, seed: int, spent) -> None:
    def limited(x: np.ndarray) -> float:
        if spent() >= evaluations:
            raise _Budget
        return objective(np.asarray(x, dtype=float))

    try:
        if optimizer == "cma" and len(start) > 1:  # pycma needs two dimensions at least; Powell does one
            try:
                import cma
            except ImportError:
                raise MissingExtraError(
                    "CMA-ES needs cma: pip install 'modelfusion[search]' (or --optimizer powell)"
                ) from None
            options = {"bounds": [0, 1], "seed": seed + 1, "verbose": -9, "maxfevals": evaluations}
            strategy = cma.CMAEvolutionStrategy(start.tolist(), 0.25, options)
            while not strategy.stop():
                points = strategy.ask()
                strategy.tell(points, [limited(p) for p in points])
        else:
            from scipy.optimize import minimize

            minimize(limited, start, method="Powell", bounds=[(0, 1)] * len(start), options={"maxfev": evaluations})
    except _Budget:
        return


def search_soup(
    members: Sequence,
    data,
    *,
    method: str = "linear",
    evaluations: int = 30,
    metric: Literal["accuracy", "nll"] = "nll",
    seed: int = 0,
):
    """`search_merge` over in-memory torch members of one registered factory (what `auto`'s merge family
    searches): each member's weight in a `method` merge of them, scored on `data`. Returns the merged module and
    the `SearchResult`."""
    from ..io import load_member, save_member

    with tempfile.TemporaryDirectory(prefix="modelfusion-soup-") as folder:
        paths = []
        for index, member in enumerate(members):
            paths.append(save_member(member, Path(folder) / f"member{index}.safetensors"))
        entries = [{"model": str(p), "parameters": {"weight": 1.0 / len(paths)}} for p in paths]
        config = MergeConfig.model_validate({"merge_method": method, "models": entries})
        result = search_merge(config, data, evaluations=evaluations, metric=metric, seed=seed)
        merged = Path(folder) / "best"
        _scored(result.config, merged, lambda out: 0.0)
        module = load_member(next(merged.glob("*.safetensors"))).module
    return module, result
