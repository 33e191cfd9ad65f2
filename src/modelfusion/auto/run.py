"""`auto`: every applicable family tried on the members, ranked on validation, confirmed on test, the chosen
candidate exported; results.json in the shape `modelfusion.report` reads."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_dir, check_output
from .._checks import checked
from .._progress import progress_bar
from ..datasets import Dataset
from ..errors import ConfigError, InvalidInputError
from ..evaluate.diversity import disagreement_matrix, oracle_accuracy
from ..evaluate.metrics import reliability_curve
from ..evaluate.stats import mcnemar_exact, scores_with_intervals
from ..members import Member, check_members
from ..predictions import collect_predictions
from ..preprocessing import PREPROCESSING_FILE
from ..results import Curves, Diversity, Results, Skipped, Verdict, versions
from .candidates import Candidate
from .families import members_family  # and the built-in families register, in the order auto runs them
from .family import FAMILIES, FamilyResult, Inputs, Skip, run_order

__all__ = ["auto", "AutoResult", "FAMILIES", "train_default_members"]


@dataclass
class AutoResult:
    """Every candidate scored (in the order the families added them), the one chosen on validation, the best
    member (chosen on validation too), the results written to results.json, and what was skipped and why."""

    candidates: list[Candidate]
    chosen: Candidate
    best_member: Candidate
    results: Results
    skipped: list[Skipped] = field(default_factory=list)


# The share of the time budget that training members may take; the families get the rest.
MEMBERS_SHARE = 0.6


def train_default_members(
    data: Dataset,
    *,
    seed: int = 0,
    cnns: int = 5,
    recipe: str | None = None,
    estimators: Sequence[str] | None = None,
    workers: int | None = None,
    deadline_s: float | None = None,
    log: Callable[[str], None] = print,
) -> list[Member]:
    """The members `auto` trains when given only data (`modelfusion.training.member_plans`, chosen by the data's
    shape): the demo's and, for images and sequences, `cnns` CNNs of different seeds (a deep ensemble of the
    strongest architecture); for tables, the strong tabular MLPs, gradient-boosted trees (scikit-learn's, and
    LightGBM, XGBoost, CatBoost when installed), a linear model and a forest. Trained in parallel processes
    (`train_plans`); with `deadline_s`, members not done by then are skipped and logged."""
    from ..training import member_plans, train_plans

    plans = member_plans(data, seed=seed, cnns=cnns, recipe=recipe, estimators=estimators)
    return train_plans(plans, data, workers=workers, deadline_s=deadline_s, log=log)


@checked
def auto(
    members: Sequence[Member] | None,
    data: Dataset,
    *,
    budget_s: float | None = None,
    families: Sequence[str] | None = None,
    seed: int = 0,
    recipe: str | None = None,
    estimators: Sequence[str] | None = None,
    workers: int | None = None,
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
        members: fitted members (torch, scikit-learn or transformers) of one classification task on `data`; None
            trains them here (`train_default_members`: chosen by the data's shape).
        data: the dataset (`load_dataset`, `load_data` or `Dataset.from_arrays`): `train` trains the members,
            the distilled student and recovery, `val` chooses, `test` scores.
        budget_s: the time budget, member training included: members still training after 60% of it are
            stopped and skipped, families that would start after it are skipped (each logged as such).
        families: which of `FAMILIES` to try (default: all).
        recipe, estimators: replace the networks' recipe and the estimators of the members trained here
            (`modelfusion.training.member_plans`).
        workers: processes training members in parallel (default: one per core, at most 4).
        out: folder for results.json, the exported chosen model (`model.*`), `preprocessing.json` for data read
            from a file (what `predict --data` applies to new data) and, with `report`, report.html
            (`modelfusion.report.write_report`); an existing non-empty folder is replaced only with `overwrite`.
        log: receives one line per family (what it added, or why it was skipped).

    Example:
        >>> result = auto(None, load_dataset("digits"), out="runs/auto")
        >>> result.chosen.name, result.results.leaderboard[0].test["accuracy"]
    """
    started = time.perf_counter()
    if data.task != "classification":
        raise ConfigError(f"auto handles classification; {data.name} is {data.task}: use modelfusion ensemble")
    chosen_families = list(FAMILIES.registered()) if families is None else list(families)
    unknown = sorted(set(chosen_families) - set(FAMILIES))
    if unknown:
        raise ConfigError(f"unknown families {unknown}; choose from {', '.join(FAMILIES.registered())}")
    if out is not None:
        check_output(Path(out), kind="folder", overwrite=overwrite)  # before any work
        if report:
            from ..report import check_report_extra

            check_report_extra()
    if members is None:
        deadline = None if budget_s is None else MEMBERS_SHARE * budget_s - (time.perf_counter() - started)
        members = train_default_members(
            data, seed=seed, recipe=recipe, estimators=estimators, workers=workers, deadline_s=deadline, log=log
        )
        log(f"members: trained {len(members)} from the recipes ({time.perf_counter() - started:.0f}s)")
    elif recipe is not None or estimators is not None:
        raise ConfigError("recipe and estimators choose the members trained here; drop them when giving members")
    members = check_members(list(members))
    if not members:
        raise InvalidInputError("auto needs at least one member")
    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)
    test = collect_predictions(members, data.test.X, data.test.y, "test", progress=False)
    inputs = Inputs(data, members, val, test, seed, {})
    found = {"member": members_family(inputs)}
    skipped = _run_families(run_order(chosen_families), inputs, found, started, budget_s, progress, log)
    config = {"families": chosen_families, "budget_s": budget_s, "seed": seed}
    if recipe is not None:
        config["recipe"] = recipe
    return _finish(inputs, found, skipped, started, out=out, report=report, overwrite=overwrite, config=config)


def _run_families(
    names: list[str],
    inputs: Inputs,
    found: dict[str, FamilyResult],
    started: float,
    budget_s: float | None,
    progress: bool,
    log: Callable[[str], None],
) -> list[Skipped]:
    """Run each family in `names` in turn, on the results of the families it requires or uses (into `found`);
    the families that did not run, and why."""
    skipped = []
    with progress_bar(progress) as bar:
        task = bar.add_task("auto", total=len(names))
        for name in names:
            bar.update(task, description=f"auto: {name}")
            elapsed = time.perf_counter() - started
            try:
                found[name] = _run_family(name, inputs, found, budget_s, elapsed)
            except Skip as reason:
                skipped.append(Skipped(family=name, reason=str(reason)))
                log(f"{name}: skipped, {reason}")
            else:
                seconds = time.perf_counter() - started - elapsed
                log(f"{name}: {len(found[name].candidates)} candidate(s) in {seconds:.1f}s")
            bar.advance(task)
    return skipped


def _run_family(
    name: str, inputs: Inputs, found: dict[str, FamilyResult], budget_s: float | None, elapsed: float
) -> FamilyResult:
    """The family `name` run on what it requires and uses; `Skip` when the budget is spent or what it requires
    did not run."""
    if budget_s is not None and elapsed >= budget_s:
        raise Skip(f"the time budget of {budget_s:.0f}s was spent ({elapsed:.0f}s)")
    family = FAMILIES[name]
    missing = [f for f in family.requires if f not in found]
    if missing:
        raise Skip(f"it needs the results of {', '.join(missing)}, which did not run")
    given = {f: found[f] for f in ("member", *family.requires, *family.uses) if f in found}
    seconds_left = None if budget_s is None else budget_s - elapsed
    return family.run(dataclasses.replace(inputs, found=given, seconds_left=seconds_left))


def _rank_key(candidate: Candidate) -> tuple:
    return (-candidate.val["accuracy"], candidate.val["nll"], candidate.cost.forward_passes or 0)


def _finish(
    ctx: Inputs,
    found: dict[str, FamilyResult],
    skipped: list[Skipped],
    started: float,
    *,
    out,
    report: bool,
    overwrite: bool,
    config: dict,
) -> AutoResult:
    """Score every candidate on test (bootstrap intervals, McNemar's exact test against the best member, both
    chosen on validation), build the results, and export the chosen candidate with them into `out`."""
    candidates = [c for result in found.values() for c in result.candidates]  # in the order the families ran
    y_test = ctx.data.test.y.numpy()
    best_member = min(found["member"].candidates, key=_rank_key)
    chosen = min((c for c in candidates if c.export is not None), key=_rank_key)
    best_correct = best_member.test_proba.argmax(1) == y_test

    def scored(candidate: Candidate) -> Candidate:
        versus = mcnemar_exact(candidate.test_proba.argmax(1) == y_test, best_correct)
        return candidate.scored(
            test=scores_with_intervals(candidate.test_proba, y_test, seed=ctx.seed),
            p_vs_best_member=None if candidate is best_member else versus["p_value"],
            description=candidate.description,
        )

    by_name = {c.name: scored(c) for c in candidates}
    results = Results(
        chosen=by_name[chosen.name],
        leaderboard=[by_name[c.name] for c in sorted(candidates, key=_rank_key)],
        verdict=Verdict(
            best_member=best_member.name,
            chosen=chosen.name,
            p_value=by_name[chosen.name].p_vs_best_member,
            test="McNemar's exact test",
        ),
        curves=Curves(
            reliability={c.name: reliability_curve(c.test_proba, y_test) for c in (best_member, chosen)},
            interpolation=_curves(found, "interpolation"),
            cascade=_curves(found, "cascade"),
            search=_curves(found, "search"),
        ),
        diversity=_diversity(ctx),
        skipped=skipped,
        config={
            **config,
            "dataset": {
                "name": ctx.data.name,
                "seed": ctx.data.seed,
                "sizes": {s: len(ctx.data.split(s)) for s in ("train", "val", "test")},
            },
            "members": [m.name for m in ctx.members],
        },
        versions=versions(),
        notes=[
            "ranked on validation only (output combiners by 5-fold cross-validated scores on it); the test split "
            "only scores: accuracy and NLL with 95% percentile bootstrap intervals, McNemar's exact test against "
            "the best member (chosen on validation)",
            "cost: latency at batch 1 on this CPU (median of 20 runs; a fusion's is the sum of its members'), "
            "bytes stored, forward passes per sample",
            *(note for result in found.values() for note in result.notes),
        ],
        wall_seconds=round(time.perf_counter() - started, 2),
    )
    if out is not None:
        out = Path(out)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            exported = chosen.export(tmp / "model")
            results = _with_path(results, str(out / exported.relative_to(tmp)))
            results.save(tmp / "results.json")
            if ctx.data.preprocessing is not None:
                ctx.data.preparation().save(tmp / PREPROCESSING_FILE)
            if report:
                from ..report import write_report

                write_report(results, tmp / "report.html")
    scored_candidates = [results.candidate(c.name) for c in candidates]
    return AutoResult(scored_candidates, results.chosen, results.candidate(best_member.name), results, skipped)


def _curves(found: dict[str, FamilyResult], kind: str) -> dict[str, list]:
    """Every family's curves of `kind` ("interpolation", "cascade"), in the order the families ran."""
    return {name: curve for result in found.values() for name, curve in result.curves.get(kind, {}).items()}


def _with_path(results: Results, path: str) -> Results:
    """`results` with the chosen candidate's export `path`, on its leaderboard row too."""
    chosen = results.chosen.scored(path=path)
    board = [chosen if c.name == chosen.name else c for c in results.leaderboard]
    return results.updated(chosen=chosen, leaderboard=board)


def _diversity(ctx: Inputs) -> Diversity:
    proba = ctx.test.probabilities(torch.float64).numpy()  # [K, N, C]
    return Diversity(
        members=list(ctx.test.member_names),
        disagreement=np.round(disagreement_matrix(proba), 4).tolist(),
        oracle_accuracy=oracle_accuracy(proba, ctx.data.test.y.numpy()),
    )
