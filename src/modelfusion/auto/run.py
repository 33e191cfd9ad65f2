"""`auto`: every applicable family tried on the members, ranked on validation, confirmed on test, the chosen
candidate exported; results.json in the shape `modelfusion.report` reads."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._atomic import atomic_dir, check_output, jsonable, write_json
from .._progress import progress_bar
from ..datasets import Dataset
from ..errors import ConfigError, InvalidInputError
from ..evaluate.diversity import disagreement_matrix, oracle_accuracy
from ..evaluate.metrics import reliability_curve
from ..evaluate.stats import mcnemar_exact, scores_with_intervals
from ..members import Member, check_members
from ..predictions import collect_predictions
from .candidates import Candidate
from .families import (
    Context,
    Skip,
    cascade_family,
    compress_family,
    distill_family,
    members_family,
    merge_family,
    output_family,
)

__all__ = ["auto", "AutoResult", "FAMILIES", "train_default_members"]

# In this order: each family may use what the ones before it found (the fusion to distil, the network to compress).
FAMILIES: dict[str, Callable[[Context], list[Candidate]]] = {
    "output": output_family,
    "merge": merge_family,
    "distill": distill_family,
    "cascade": cascade_family,
    "compress": compress_family,
}


@dataclass
class AutoResult:
    """Every candidate scored, the one chosen on validation, and what was skipped and why."""

    candidates: list[Candidate]
    chosen: Candidate
    best_member: Candidate
    results: dict
    skipped: list[dict] = field(default_factory=list)


def train_default_members(
    data: Dataset, *, seed: int = 0, cnns: int = 5, log: Callable[[str], None] = print
) -> list[Member]:
    """The members `auto` trains when given only a dataset: the demo's (MLPs of three seeds, a logistic
    regression, a random forest) and, where the dataset has a CNN recipe, `cnns` CNNs of different seeds (a
    deep ensemble of its strongest architecture), all from the dataset's recipes."""
    from ..demo import DemoMember, member_recipes, train_member
    from ..training import RECIPES

    planned = member_recipes(data, seed=seed)
    if f"{data.name}-cnn" in RECIPES:
        recipe = RECIPES[f"{data.name}-cnn"]
        planned += [DemoMember(f"cnn_{i}", recipe, seed=seed * 1000 + 100 + i) for i in range(1, cnns)]
    members = []
    for member in planned:
        started = time.perf_counter()
        members.append(train_member(member, data, None))
        log(f"  trained {member.name} in {time.perf_counter() - started:.1f}s")
    return members


def auto(
    members: Sequence[Member] | None,
    data: Dataset,
    *,
    budget_s: float | None = None,
    families: Sequence[str] | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    report: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> AutoResult:
    """Try every applicable family of fusion on `members` (trained here from the dataset's recipes when None),
    rank the candidates on validation only, and score them on test.

    The chosen candidate is the most accurate on validation among those that can be exported (ties: the lower
    NLL, then the fewer forward passes); output combiners are judged by their 5-fold cross-validated scores on
    validation, since validation fitted them. On test, every candidate gets bootstrap intervals and McNemar's
    exact test against the best member (the best member chosen on validation too).

    Args:
        members: fitted members (torch or scikit-learn) of one classification task on `data`.
        data: the dataset: `train` trains the distilled student and recovery, `val` chooses, `test` scores.
        budget_s: families that would start after this many seconds are skipped (and logged as such).
        families: which of `FAMILIES` to try (default: all).
        out: folder for results.json, the exported chosen model (`model.*`) and, with `report`, report.html
            (`modelfusion.report.write_report`); an existing non-empty folder is replaced only with `overwrite`.
        log: receives one line per family (what it added, or why it was skipped).

    Example:
        >>> result = auto(None, load_dataset("digits"), out="runs/auto")
        >>> result.chosen.name, result.results["leaderboard"][0]["test"]["accuracy"]
    """
    started = time.perf_counter()
    if data.task != "classification":
        raise ConfigError(f"auto handles classification; {data.name} is {data.task}: use modelfusion ensemble")
    chosen_families = list(FAMILIES) if families is None else list(families)
    unknown = sorted(set(chosen_families) - set(FAMILIES))
    if unknown:
        raise ConfigError(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if out is not None:
        check_output(Path(out), kind="folder", overwrite=overwrite)  # before any work
        if report:
            from ..report import check_report_extra

            check_report_extra()
    if members is None:
        members = train_default_members(data, seed=seed, log=log)
        log(f"members: trained {len(members)} from the recipes ({time.perf_counter() - started:.0f}s)")
    members = check_members(list(members))
    if not members:
        raise InvalidInputError("auto needs at least one member")
    ctx = Context(
        data,
        members,
        collect_predictions(members, data.val.X, data.val.y, "val", progress=False),
        collect_predictions(members, data.test.X, data.test.y, "test", progress=False),
        seed=seed,
    )
    ctx.candidates += members_family(ctx)
    skipped = []
    with progress_bar(progress) as bar:
        task = bar.add_task("auto", total=len(chosen_families))
        for name in chosen_families:
            bar.update(task, description=f"auto: {name}")
            elapsed = time.perf_counter() - started
            if budget_s is not None and elapsed > budget_s:
                reason = f"the time budget of {budget_s:.0f}s was spent ({elapsed:.0f}s)"
                skipped.append({"family": name, "reason": reason})
                log(f"{name}: skipped, {reason}")
            else:
                try:
                    added = FAMILIES[name](ctx)
                except Skip as reason:
                    skipped.append({"family": name, "reason": str(reason)})
                    log(f"{name}: skipped, {reason}")
                else:
                    ctx.candidates += added
                    log(f"{name}: {len(added)} candidate(s) in {time.perf_counter() - started - elapsed:.1f}s")
            bar.advance(task)
    return _finish(
        ctx,
        skipped,
        started,
        out=out,
        report=report,
        overwrite=overwrite,
        config={"families": chosen_families, "budget_s": budget_s, "seed": seed},
    )


def _rank_key(candidate: Candidate) -> tuple:
    return (-candidate.val["accuracy"], candidate.val["nll"], candidate.cost.get("forward_passes") or 0)


def _finish(
    ctx: Context, skipped: list[dict], started: float, *, out, report: bool, overwrite: bool, config: dict
) -> AutoResult:
    y_test = ctx.data.test.y.numpy()
    members = [c for c in ctx.candidates if c.family == "member"]
    best_member = min(members, key=_rank_key)
    exportable = [c for c in ctx.candidates if c.export is not None]
    chosen = min(exportable, key=_rank_key)
    best_correct = best_member.test_proba.argmax(1) == y_test
    leaderboard = []
    for candidate in sorted(ctx.candidates, key=_rank_key):
        versus = mcnemar_exact(candidate.test_proba.argmax(1) == y_test, best_correct)
        leaderboard.append(
            {
                "name": candidate.name,
                "family": candidate.family,
                "val": candidate.val,
                "test": scores_with_intervals(candidate.test_proba, y_test, seed=ctx.seed),
                "cost": candidate.cost,
                "p_vs_best_member": None if candidate is best_member else versus["p_value"],
                "description": candidate.description,
            }
        )
    by_name = {row["name"]: row for row in leaderboard}
    results = {
        "chosen": by_name[chosen.name],
        "leaderboard": leaderboard,
        "verdict": {
            "best_member": best_member.name,
            "chosen": chosen.name,
            "p_value": by_name[chosen.name]["p_vs_best_member"],
            "test": "McNemar's exact test",
        },
        "curves": {
            "reliability": {
                c.name: reliability_curve(c.test_proba, y_test) for c in (best_member, chosen) if c is not None
            },
            "interpolation": ctx.curves["interpolation"],
            "cascade": ctx.curves["cascade"],
            "search": ctx.curves["search"],
        },
        "diversity": _diversity(ctx),
        "skipped": skipped,
        "config": {
            **config,
            "dataset": {
                "name": ctx.data.name,
                "seed": ctx.data.seed,
                "sizes": {s: len(ctx.data.split(s)) for s in ("train", "val", "test")},
            },
            "members": [m.name for m in ctx.members],
        },
        "versions": {
            "modelfusion": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "notes": [
            "ranked on validation only (output combiners by 5-fold cross-validated scores on it); the test split "
            "only scores: accuracy and NLL with 95% percentile bootstrap intervals, McNemar's exact test against "
            "the best member (chosen on validation)",
            "cost: latency at batch 1 on this CPU (median of 20 runs; a fusion's is the sum of its members'), "
            "bytes stored, forward passes per sample",
            *ctx.curves.get("notes", []),
        ],
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if out is not None:
        out = Path(out)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            exported = chosen.export(tmp / "model")
            results["chosen"]["path"] = str(out / exported.relative_to(tmp))
            write_json(tmp / "results.json", jsonable(results))
            if report:
                from ..report import write_report

                write_report(tmp / "results.json", tmp / "report.html")
    return AutoResult(ctx.candidates, chosen, best_member, results, skipped)


def _diversity(ctx: Context) -> dict:
    proba = ctx.test.probabilities(torch.float64).numpy()  # [K, N, C]
    return {
        "members": list(ctx.test.member_names),
        "disagreement": np.round(disagreement_matrix(proba), 4).tolist(),
        "oracle_accuracy": oracle_accuracy(proba, ctx.data.test.y.numpy()),
    }
