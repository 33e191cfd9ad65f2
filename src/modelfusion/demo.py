"""The main job: train a diverse set of members on embedded data, fuse them, and show the leaderboard.

Heterogeneous members (the classic "linear model + trees + neural networks" recipe) make errors that
differ, which is what fusion feeds on. Everything fitted sees train (members) or validation (early
stopping, combiners) data only; the test split is used once, for the leaderboard.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge

from . import __version__
from ._atomic import atomic_dir, write_json
from .datasets import Dataset, load_dataset
from .ensemble import fuse_and_evaluate, save_combiner
from .errors import ConfigError
from .io import save_member
from .io.factory import build_model
from .members import Member, SklearnMember, TorchMember
from .predictions import collect_predictions
from .report import print_leaderboard
from .training import train_model

__all__ = ["run_demo", "member_recipes", "Recipe"]


@dataclass
class Recipe:
    """How to build and train one member: a torch factory with its arguments, or a scikit-learn estimator."""

    name: str
    factory: str | None = None
    factory_kwargs: dict = field(default_factory=dict)
    seed: int = 0
    estimator: Callable[[], object] | None = None


def member_recipes(data: Dataset, *, seed: int = 0, n_mlps: int = 3) -> list[Recipe]:
    """The demo's members for `data`: MLPs with different seeds, a CNN when the data has an image form,
    a linear model and a random forest."""
    classification = data.task == "classification"
    outputs = data.num_classes if classification else 1
    mlp_kwargs = {"in_features": data.num_features, "num_outputs": outputs, "hidden": [128]}
    if not classification:
        y = data.train.y
        mlp_kwargs.update(hidden=[64], target_mean=float(y.mean()), target_std=float(y.std()))
    recipes = [
        Recipe(f"mlp_{i}", "modelfusion.models:mlp", dict(mlp_kwargs), seed=seed * 1000 + i) for i in range(n_mlps)
    ]
    if classification and data.image_shape is not None:
        if len(data.image_shape) == 3:
            cnn = (
                "modelfusion.models:cnn2d",
                {"image_shape": list(data.image_shape), "num_outputs": outputs},
            )
        else:
            cnn = ("modelfusion.models:cnn1d", {"length": data.image_shape[-1], "num_outputs": outputs})
        recipes.append(Recipe("cnn", *cnn, seed=seed * 1000 + 100))
    if classification:
        recipes += [
            Recipe("logreg", estimator=lambda: LogisticRegression(C=1.0, max_iter=2000)),
            Recipe("random_forest", estimator=lambda: RandomForestClassifier(300, random_state=seed, n_jobs=-1)),
        ]
    else:
        recipes += [
            Recipe("ridge", estimator=lambda: Ridge(alpha=1.0)),
            Recipe(
                "random_forest",
                estimator=lambda: RandomForestRegressor(300, min_samples_leaf=5, random_state=seed, n_jobs=-1),
            ),
        ]
    return recipes


def _train_member(recipe: Recipe, data: Dataset, epochs: int) -> Member:
    if recipe.estimator is not None:
        estimator = recipe.estimator().fit(data.train.X.numpy(), data.train.y.numpy())
        return SklearnMember(estimator, name=recipe.name)
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.factory, recipe.factory_kwargs)
    model = train_model(model, data.train, data.val, task=data.task, epochs=epochs, seed=recipe.seed)
    return TorchMember(
        model, name=recipe.name, task=data.task, factory=recipe.factory, factory_kwargs=recipe.factory_kwargs
    )


def run_demo(
    dataset: str = "digits",
    *,
    seed: int = 0,
    out: str | Path = "runs/demo",
    epochs: int = 40,
    n_mlps: int = 3,
    progress: bool = True,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict:
    """Train members on `dataset`, fit every combiner on validation, score on test, print and save.

    Writes the folder `out`, all or nothing: `members/` (safetensors / skops), `predictions/{val,test}.safetensors`,
    `combiners/NAME.safetensors` and `results.json`. An existing non-empty `out` is replaced only with
    `overwrite`. Returns the content of `results.json`.

    Example:
        >>> results = run_demo("digits", out="runs/demo")
        >>> results["test"]["best_member"]
    """
    console = console or Console()
    start = time.perf_counter()
    out = Path(out)
    if epochs < 1 or n_mlps < 0:
        raise ConfigError(f"the demo needs epochs >= 1 and mlps >= 0, got epochs={epochs}, mlps={n_mlps}")
    data = load_dataset(dataset, seed=seed)
    with atomic_dir(out, overwrite=overwrite) as folder:
        console.print(f"[bold]modelfusion demo[/bold]  {data.summary()}")
        results = _train_fuse_and_score(data, folder, out, epochs, n_mlps, progress, console)
        results["wall_seconds"] = round(time.perf_counter() - start, 2)
        write_json(folder / "results.json", results)
    console.print(f"results -> {out / 'results.json'}  ({results['wall_seconds']:.1f}s)")
    return results


def _train_fuse_and_score(
    data: Dataset, folder: Path, out: Path, epochs: int, n_mlps: int, progress: bool, console: Console
) -> dict:
    """The demo's work, written into `folder` (which becomes `out` when all of it is done)."""
    members, member_info = [], []
    for recipe in member_recipes(data, seed=data.seed, n_mlps=n_mlps):
        t0 = time.perf_counter()
        member = _train_member(recipe, data, epochs)
        seconds = time.perf_counter() - t0
        path = save_member(member, folder / "members" / recipe.name).relative_to(folder)
        members.append(member)
        member_info.append({"name": recipe.name, "file": str(path), "train_seconds": round(seconds, 3)})
        console.print(f"  trained {recipe.name:<14} in {seconds:5.1f}s -> {out / path}")

    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=progress)
    test = collect_predictions(members, data.test.X, data.test.y, "test", progress=progress)
    val.save(folder / "predictions" / "val.safetensors")
    test.save(folder / "predictions" / "test.safetensors")

    run = fuse_and_evaluate(val, test, "all", seed=data.seed)
    print_leaderboard(run.report, console)
    for name, combiner in run.combiners.items():
        save_combiner(combiner, folder / "combiners" / f"{name}.safetensors")

    return {
        "modelfusion_version": __version__,
        "dataset": {
            "name": data.name,
            "seed": data.seed,
            "task": data.task,
            "source": data.source,
            "sizes": {s: len(data.split(s)) for s in ("train", "val", "test")},
        },
        "settings": {"epochs": epochs, "n_mlps": n_mlps},
        "members": member_info,
        **run.summary(),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
