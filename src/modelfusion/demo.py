"""The main job: train a diverse set of members on embedded data, fuse them, and show the leaderboard.

Heterogeneous members (the classic "linear model + trees + neural networks" recipe) make errors that
differ, which is what fusion feeds on; the networks are trained with the dataset's recipe
(`modelfusion.training.RECIPES`), so the fusion is measured over members at their published accuracy.
Everything fitted sees train (members) or validation (early stopping, combiners, the choice of the fusion to
report) data only; the test split is used once, for the leaderboard.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.text import Text

from ._atomic import atomic_dir
from ._deprecation import deprecated
from ._terminal import terminal_console, terminal_text
from .datasets import Dataset, load_dataset
from .ensemble import fuse_and_evaluate, save_combiner
from .errors import ConfigError
from .io import save_member
from .members import Member
from .predictions import collect_predictions
from .preprocessing import PREPROCESSING_FILE
from .report import check_report_extra, print_leaderboard, write_report
from .results import Results, versions
from .training import MemberPlan, member_plans

__all__ = ["run_demo"]


def __getattr__(name: str):
    if name == "DemoMember":  # moved with the member plans to `training`, which `auto` shares
        deprecated("modelfusion.demo.DemoMember", "modelfusion.training.MemberPlan")
        return MemberPlan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def member_recipes(data: Dataset, *, seed: int = 0, n_mlps: int = 3) -> list[MemberPlan]:
    """Deprecated: `modelfusion.training.member_plans(data, seed=..., mlps=...)`."""
    deprecated("modelfusion.demo.member_recipes", "modelfusion.training.member_plans")
    return member_plans(data, seed=seed, mlps=n_mlps)


def train_member(member: MemberPlan, data: Dataset, epochs: int | None) -> Member:
    """Deprecated: `MemberPlan.train(data, epochs=...)`."""
    deprecated("modelfusion.demo.train_member", "modelfusion.training.MemberPlan.train")
    return member.train(data, epochs=epochs)


def run_demo(
    dataset: str | Dataset = "digits",
    *,
    seed: int = 0,
    out: str | Path = "runs/demo",
    epochs: int | None = None,
    n_mlps: int = 3,
    recipe: str | None = None,
    estimators: Sequence[str] | None = None,
    progress: bool = True,
    report: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> Results:
    """Train members on `dataset` (an embedded dataset's name, or a `Dataset` from `load_data` or
    `Dataset.from_arrays`), fit every combiner on validation, score on test, print and save.

    The members are `modelfusion.training.member_plans(data, ...)`: chosen by the data's shape, `recipe` and
    `estimators` replacing the networks' recipe and the estimators. Writes the folder `out`, all or nothing:
    `members/` (safetensors / skops), `predictions/{val,test}.safetensors`, `combiners/NAME.safetensors`,
    `results.json`, `preprocessing.json` for data read from a file (what `predict --data` applies to new data)
    and, with `report`, `report.html` (`write_report`). An existing non-empty `out` is replaced only with
    `overwrite`. Returns what `results.json` holds.

    Example:
        >>> results = run_demo("digits", out="runs/demo")
        >>> results.verdict.best_member, results.chosen.name
    """
    console = console or terminal_console()
    start = time.perf_counter()
    out = Path(out)
    if (epochs is not None and epochs < 1) or n_mlps < 0:
        raise ConfigError(f"the demo needs epochs >= 1 and mlps >= 0, got epochs={epochs}, mlps={n_mlps}")
    if report:
        check_report_extra()  # before any training
    data = load_dataset(dataset, seed=seed) if isinstance(dataset, str) else dataset
    plans = member_plans(data, seed=data.seed, mlps=n_mlps, recipe=recipe, estimators=estimators)  # checked now
    with atomic_dir(out, overwrite=overwrite) as folder:
        console.print(Text.assemble(("modelfusion demo", "bold"), "  ", terminal_text(data.summary())))
        settings = {"epochs": epochs, "n_mlps": n_mlps, **({"recipe": recipe} if recipe else {})}
        results = _train_fuse_and_score(data, plans, folder, out, settings, progress, console)
        if data.preprocessing is not None:
            data.preparation().save(folder / PREPROCESSING_FILE)
        results = results.updated(wall_seconds=round(time.perf_counter() - start, 2))
        results.save(folder / "results.json")
        if report:
            write_report(results, folder / "report.html")
    console.print(f"results -> {out / 'results.json'}  ({results.wall_seconds:.1f}s)")
    if report:
        console.print(f"report -> {out / 'report.html'}")
    return results


def _train_fuse_and_score(
    data: Dataset, plans: list[MemberPlan], folder: Path, out: Path, settings: dict, progress: bool, console: Console
) -> Results:
    """The demo's work, written into `folder` (which becomes `out` when all of it is done)."""
    members, member_info = [], {}
    for planned in plans:
        t0 = time.perf_counter()
        member = planned.train(data, epochs=settings["epochs"])
        seconds = time.perf_counter() - t0
        path = save_member(member, folder / "members" / planned.name).relative_to(folder)
        members.append(member)
        info = {"file": str(path), "train_seconds": round(seconds, 3)}
        if planned.recipe is not None:
            info["recipe"] = planned.recipe.name
        member_info[planned.name] = info
        console.print(f"  trained {planned.name:<14} in {seconds:5.1f}s -> {out / path}")

    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=progress)
    test = collect_predictions(members, data.test.X, data.test.y, "test", progress=progress)
    val.save(folder / "predictions" / "val.safetensors")
    test.save(folder / "predictions" / "test.safetensors")

    run = fuse_and_evaluate(val, test, "all", seed=data.seed)
    for name, combiner in run.combiners.items():
        save_combiner(combiner, folder / "combiners" / f"{name}.safetensors")
    results = run.results()
    dataset = {"name": data.name, "seed": data.seed, "task": data.task, "source": data.source}
    dataset["sizes"] = {s: len(data.split(s)) for s in ("train", "val", "test")}
    config = {"dataset": dataset, "settings": settings, **results.config}
    config["members"] = list(member_info)
    candidates = [
        c.scored(details={**c.details, **member_info[c.name]}) if c.name in member_info else c
        for c in results.leaderboard
    ]
    chosen = next((c for c in candidates if results.chosen and c.name == results.chosen.name), None)
    update = {"leaderboard": candidates, "chosen": chosen, "config": config, "versions": versions()}
    results = results.updated(**update)
    print_leaderboard(results, console)
    return results
