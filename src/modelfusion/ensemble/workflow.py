"""Fit many combiners on validation predictions, score them on test: the `modelfusion ensemble` job."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._atomic import atomic_dir
from ..errors import IncompatibleModelsError, LeakageError
from ..evaluate import Report, evaluate
from ..predictions import Predictions, check_fit_labels, is_test_split, same_samples
from ..results import Cost, Results, Verdict
from .base import Combiner
from .choose import Choice, choose_combiner
from .registry import combiners_for, make_combiner
from .serialize import save_combiner

__all__ = ["EnsembleRun", "fuse_and_evaluate", "fit_combiners"]


@dataclass
class EnsembleRun:
    """Fitted combiners, the test report that scores them beside the members, and fit times."""

    combiners: dict[str, Combiner]
    report: Report
    fit_seconds: dict[str, float] = field(default_factory=dict)
    choice: Choice | None = None  # the fusion to report, chosen on validation (None: too few samples)

    def results(self) -> Results:
        """The run in the one results schema (`modelfusion.results`): the test report's candidates (members and
        fusions, `Report.to_results`), each fusion with its cross-validated validation scores, the members it
        runs (`cost.forward_passes`) and what its combiner learned (`details["combiner"]`: `Combiner.describe`,
        the weights and whether the best member replaced the fusion, and why; stacking's cross-validated
        score; members `mean_logit` found overconfident; temperatures; and its fit time); the fusion chosen on
        validation and its test against the best member."""
        results = self.report.to_results()
        cross_validated = self.choice.scores if self.choice is not None else {}
        candidates = []
        for candidate in results.leaderboard:
            combiner = self.combiners.get(candidate.name)
            if candidate.family != "output" or combiner is None:
                candidates.append(candidate)
                continue
            learned = {**combiner.describe(), "fit_seconds": round(self.fit_seconds[candidate.name], 4)}
            update = {"cost": Cost(forward_passes=len(combiner.members_used()))}
            update["details"] = {**candidate.details, "combiner": learned}
            if candidate.name in cross_validated:
                update["val"] = dict(cross_validated[candidate.name])
            candidates.append(candidate.scored(**update))
        update = {"leaderboard": candidates}
        if self.choice is not None:
            chosen = next(c for c in candidates if c.name == self.choice.name)
            versus = self.report.row(chosen.name).vs_best_member
            update["chosen"] = chosen
            update["verdict"] = Verdict(
                best_member=self.report.best_member,
                chosen=chosen.name,
                p_value=versus["p_value"],
                test="McNemar's exact test" if versus["test"] == "mcnemar_exact" else "a paired bootstrap test",
            )
            choice = {"metric": self.choice.metric, "not_eligible": list(self.choice.not_eligible)}
            update["config"] = {**results.config, "choice": choice}
            update["notes"] = [*results.notes, f"chosen on validation: {self.choice.reason()}"]
        return results.updated(**update)

    def save(
        self, out: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
    ) -> Path:
        """Write `combiners/NAME.safetensors` and `results.json` into the folder `out`, all or nothing.

        An existing non-empty `out` is replaced (as a whole: no stale combiner survives) only with `overwrite`,
        and never one that is or holds one of `inputs`.
        """
        out = Path(out)
        with atomic_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
            for name, combiner in self.combiners.items():
                save_combiner(combiner, tmp / "combiners" / f"{name}.safetensors")
            self.results().save(tmp / "results.json")
        return out


def fuse_and_evaluate(
    val: Predictions,
    test: Predictions,
    methods: Sequence[str] | str = "all",
    *,
    params: dict[str, dict] | None = None,
    X_val: torch.Tensor | None = None,
    X_test: torch.Tensor | None = None,
    seed: int = 0,
    choose: bool = True,
) -> EnsembleRun:
    """Fit each combiner on `val`, fuse `test`, and score members and fusions together.

    Args:
        val: member predictions with labels on the validation split (the only data anything is fitted on);
            predictions of the test split are refused (`LeakageError`).
        test: predictions of the same members on the test split (only scored); the same predictions as `val`
            are refused.
        methods: combiner names, or "all" for every combiner that supports the task.
        params: per-method constructor arguments, e.g. `{"weighted": {"shrinkage": 0.1}}`.
        X_val, X_test: original inputs, for combiners that use them (stacking with passthrough).
        seed: seed of the bootstrap in the report and of the folds that choose the fusion.
        choose: also choose the fusion to report by 5-fold cross-validated NLL (MSE) on `val` (`choose_combiner`;
            `run.choice`): the test leaderboard ranks every fusion, but picking its top row would be choosing on
            test.

    Example:
        >>> run = fuse_and_evaluate(val_preds, test_preds, "all")
        >>> run.report.ranked()[0].name
    """
    _check_no_leak(val, test)
    check_fit_labels(val.labels, val.task, "the validation predictions")
    if val.member_names != test.member_names:
        raise IncompatibleModelsError(
            f"validation predictions are of members {list(val.member_names)} but test predictions of "
            f"{list(test.member_names)}; both must come from the same members in the same order"
        )
    if (val.task, val.num_classes, val.classes) != (test.task, test.num_classes, test.classes):
        raise IncompatibleModelsError(
            f"validation predictions are {val.task} over classes {val.classes} but test predictions {test.task} over "
            f"{test.classes}; both must come from the same members on one dataset"
        )
    combiners, seconds, choice = fit_combiners(val, methods, params=params, X_val=X_val, seed=seed, choose=choose)
    fused = {name: combiner.fuse(test, X=X_test) for name, combiner in combiners.items()}
    return EnsembleRun(combiners, evaluate(test, fused, seed=seed), seconds, choice)


def fit_combiners(
    val: Predictions,
    methods: Sequence[str] | str = "all",
    *,
    params: dict[str, dict] | None = None,
    X_val: torch.Tensor | None = None,
    seed: int = 0,
    choose: bool = True,
) -> tuple[dict[str, Combiner], dict[str, float], Choice | None]:
    """Fit each combiner of `methods` ("all": every one for the task) on `val` and, with `choose`, choose one by
    5-fold cross-validated NLL (MSE) on `val`: what `fuse_and_evaluate` does before it scores on test, for
    callers that score in their own way (`auto`). Returns the fitted combiners, their fit times in seconds and
    the choice (None: too few samples per class to cross-validate)."""
    names = combiners_for(val.task) if methods == "all" else list(methods)
    params = params or {}
    combiners, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        combiners[name] = make_combiner(name, **params.get(name, {})).fit(val, X=X_val)
        seconds[name] = time.perf_counter() - start
    choice = _choose(val, names, params, X_val, seed) if choose else None
    return combiners, seconds, choice


def _choose(val: Predictions, names: list[str], params: dict, X_val, seed: int) -> Choice | None:
    """The combiner chosen on validation, with as many folds (at most 5) as the rarest class allows."""
    folds = 5
    if val.task == "classification":
        folds = min(folds, int(torch.bincount(val.labels).min()))
    if folds < 2:
        return None
    return choose_combiner(val, names, folds=folds, seed=seed, params=params, X=X_val)


def _check_no_leak(val: Predictions, test: Predictions) -> None:
    """Refuse what would score combiners on the labels they were fitted on: test predictions given as the
    validation ones, or one set of predictions given as both."""
    if is_test_split(val.split):
        raise LeakageError(
            f"the validation predictions are of the {val.split!r} split: combiners fitted on them would be scored "
            "on the labels they learned from; fit on validation predictions (split 'val') and only score on test"
        )
    if val is test or same_samples(val, test):
        raise LeakageError(
            f"the validation and test predictions are the same (split {val.split!r} and {test.split!r}: identical "
            f"labels and outputs for the same {val.num_samples} samples, whatever the splits are called): combiners "
            "would be scored on the labels they were fitted on; give the validation split's predictions as val and the "
            "test split's as test"
        )
