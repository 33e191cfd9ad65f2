"""The main job: train a diverse set of members on embedded data, fuse them, and show the leaderboard.

Heterogeneous members (the classic "linear model + trees + neural networks" recipe) make errors that
differ, which is what fusion feeds on; the networks are trained with the dataset's recipe
(`modelfusion.training.RECIPES`), so the fusion is measured over members at their published accuracy.
Everything fitted sees train (members) or validation (early stopping, combiners, the choice of the fusion to
report) data only; the test split is used once, for the leaderboard.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge

from . import __version__
from ._atomic import atomic_dir, write_json
from ._terminal import terminal_console, terminal_text
from .datasets import Dataset, load_dataset
from .ensemble import fuse_and_evaluate, save_combiner
from .errors import ConfigError
from .io import save_member
from .members import Member, SklearnMember
from .predictions import collect_predictions
from .report import check_report_extra, print_leaderboard, write_report
from .training import RECIPES, TrainingRecipe, recipe_for

__all__ = ["run_demo", "member_recipes", "train_member", "DemoMember"]


@dataclass
class DemoMember:
    """One member of the demo: a training recipe with its seed, or a scikit-learn estimator."""

    name: str
    recipe: TrainingRecipe | None = None
    seed: int = 0
    estimator: Callable[[], object] | None = None


def member_recipes(data: Dataset, *, seed: int = 0, n_mlps: int = 3) -> list[DemoMember]:
    """The demo's members for `data`: MLPs with different seeds, a CNN when the data has an image form (both
    from the dataset's recipes), a linear model and a random forest."""
    classification = data.task == "classification"
    members = [DemoMember(f"mlp_{i}", recipe_for(data, "mlp"), seed=seed * 1000 + i) for i in range(n_mlps)]
    if classification and f"{data.name}-cnn" in RECIPES:
        members.append(DemoMember("cnn", recipe_for(data, "cnn"), seed=seed * 1000 + 100))
    if classification:
        members += [
            DemoMember("logreg", estimator=lambda: LogisticRegression(C=1.0, max_iter=2000)),
            DemoMember("random_forest", estimator=lambda: RandomForestClassifier(300, random_state=seed, n_jobs=-1)),
        ]
    else:
        members += [
            DemoMember("ridge", estimator=lambda: Ridge(alpha=1.0)),
            DemoMember(
                "random_forest",
                estimator=lambda: RandomForestRegressor(300, min_samples_leaf=5, random_state=seed, n_jobs=-1),
            ),
        ]
    return members


def train_member(member: DemoMember, data: Dataset, epochs: int | None) -> Member:
    """Train one planned member: its recipe with its seed, or its estimator on the training split."""
    if member.estimator is not None:
        estimator = member.estimator().fit(data.train.X.numpy(), data.train.y.numpy())
        if "n_jobs" in estimator.get_params():
            # fitted in parallel, served on one job: starting joblib's workers costs a one-sample prediction of
            # the digits forest more than its trees do (22 ms against 8 ms)
            estimator.set_params(n_jobs=1)
        return SklearnMember(estimator, name=member.name)
    model = member.recipe.train(data, seed=member.seed, epochs=epochs)
    return member.recipe.member(model, data, name=member.name)


def run_demo(
    dataset: str = "digits",
    *,
    seed: int = 0,
    out: str | Path = "runs/demo",
    epochs: int | None = None,
    n_mlps: int = 3,
    progress: bool = True,
    report: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict:
    """Train members on `dataset`, fit every combiner on validation, score on test, print and save.

    Writes the folder `out`, all or nothing: `members/` (safetensors / skops), `predictions/{val,test}.safetensors`,
    `combiners/NAME.safetensors`, `results.json` and, with `report`, `report.html` (`write_report`). An existing
    non-empty `out` is replaced only with `overwrite`. Returns the content of `results.json`.

    Example:
        >>> results = run_demo("digits", out="runs/demo")
        >>> results["test"]["best_member"]
    """
    console = console or terminal_console()
    start = time.perf_counter()
    out = Path(out)
    if (epochs is not None and epochs < 1) or n_mlps < 0:
        raise ConfigError(f"the demo needs epochs >= 1 and mlps >= 0, got epochs={epochs}, mlps={n_mlps}")
    if report:
        check_report_extra()  # before any training
    data = load_dataset(dataset, seed=seed)
    with atomic_dir(out, overwrite=overwrite) as folder:
        console.print(Text.assemble(("modelfusion demo", "bold"), "  ", terminal_text(data.summary())))
        results = _train_fuse_and_score(data, folder, out, epochs, n_mlps, progress, console)
        results["wall_seconds"] = round(time.perf_counter() - start, 2)
        write_json(folder / "results.json", results)
        if report:
            write_report(folder / "results.json", folder / "report.html")
    console.print(f"results -> {out / 'results.json'}  ({results['wall_seconds']:.1f}s)")
    if report:
        console.print(f"report -> {out / 'report.html'}")
    return results


def _train_fuse_and_score(
    data: Dataset, folder: Path, out: Path, epochs: int, n_mlps: int, progress: bool, console: Console
) -> dict:
    """The demo's work, written into `folder` (which becomes `out` when all of it is done)."""
    members, member_info = [], []
    for planned in member_recipes(data, seed=data.seed, n_mlps=n_mlps):
        t0 = time.perf_counter()
        member = train_member(planned, data, epochs)
        seconds = time.perf_counter() - t0
        path = save_member(member, folder / "members" / planned.name).relative_to(folder)
        members.append(member)
        info = {"name": planned.name, "file": str(path), "train_seconds": round(seconds, 3)}
        if planned.recipe is not None:
            info["recipe"] = planned.recipe.name
        member_info.append(info)
        console.print(f"  trained {planned.name:<14} in {seconds:5.1f}s -> {out / path}")

    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=progress)
    test = collect_predictions(members, data.test.X, data.test.y, "test", progress=progress)
    val.save(folder / "predictions" / "val.safetensors")
    test.save(folder / "predictions" / "test.safetensors")

    run = fuse_and_evaluate(val, test, "all", seed=data.seed)
    print_leaderboard(run.report, console, chosen=run.choice and run.choice.reason())
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
