"""Evaluation you can trust: metrics with bootstrap intervals, significance against the best member, diversity.

`evaluate(preds, fused)` scores every member of a `Predictions` and every fused prediction on the same
samples, with the same bootstrap resamples (so intervals are paired), and tests each fusion against the
best single member (exact McNemar for classification, paired bootstrap of squared errors for regression).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from .._checks import PositiveInt, Share, check_seed, checked
from ..errors import InvalidInputError
from ..predictions import Predictions
from ..results import Candidate, Cost, Curves, Diversity, Results
from ..tasks import Task
from .diversity import diversity
from .metrics import (
    classification_metrics,
    expected_calibration_error,
    per_sample_classification,
    per_sample_regression,
    regression_metrics,
    reliability_curve,
)
from .stats import (
    bootstrap_counts,
    bootstrap_means,
    mcnemar_exact,
    paired_bootstrap_test,
    percentile_interval,
)

# Bootstrap resamples taken at most: each is a row of counts over the split, and past this the draws outgrow
# memory long before the intervals get any tighter.
MAX_RESAMPLES = 100_000

__all__ = [
    "evaluate",
    "Report",
    "Row",
    "classification_metrics",
    "regression_metrics",
    "expected_calibration_error",
    "reliability_curve",
    "mcnemar_exact",
]

# (metric, higher is better) used to rank and to pick the best member.
PRIMARY = {"classification": ("accuracy", True), "regression": ("rmse", False)}


@dataclass
class Row:
    """One scored prediction: a member or a fusion."""

    name: str
    kind: str  # "member" or "fusion"
    metrics: dict[str, float]
    ci: dict[str, list[float]] = field(default_factory=dict)
    vs_best_member: dict | None = None


@dataclass
class Report:
    """Scores of members and fusions on one split; `to_dict()` is what goes into results.json."""

    task: Task
    split: str
    num_samples: int
    confidence: float
    n_resamples: int
    best_member: str
    rows: list[Row]
    diversity: dict
    reliability: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> `reliability_curve`

    @property
    def primary_metric(self) -> str:
        return PRIMARY[self.task][0]

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise InvalidInputError(f"no row named {name!r}; rows are {[r.name for r in self.rows]}")

    def ranked(self) -> list[Row]:
        """Rows from best to worst by the primary metric (accuracy, or RMSE for regression)."""
        metric, higher = PRIMARY[self.task]
        return sorted(self.rows, key=lambda r: -r.metrics[metric] if higher else r.metrics[metric])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["primary_metric"] = self.primary_metric
        return out

    def to_results(self) -> Results:
        """This report in the one results schema (what results.json holds and the report renders): a candidate
        per row (family "member", or "output" for a fusion) with its test scores and their intervals
        (`<metric>_ci`) and its test against the best member (`p_vs_best_member`, the whole test in
        `details["vs_best_member"]`); the reliability curves and the members' diversity. Nothing is chosen:
        only validation may choose (`EnsembleRun.results` adds the choice)."""
        candidates = [
            Candidate(
                name=row.name,
                family="member" if row.kind == "member" else "output",
                test={**row.metrics, **{f"{metric}_ci": tuple(ci) for metric, ci in row.ci.items()}},
                cost=Cost(forward_passes=1) if row.kind == "member" else Cost(),
                p_vs_best_member=row.vs_best_member["p_value"] if row.vs_best_member else None,
                details={"vs_best_member": row.vs_best_member} if row.vs_best_member else {},
            )
            for row in self.rows
        ]
        members = [row.name for row in self.rows if row.kind == "member"]
        evaluation = {"split": self.split, "num_samples": self.num_samples, "best_member": self.best_member}
        evaluation.update(confidence=self.confidence, n_resamples=self.n_resamples)
        return Results(
            chosen=None,
            leaderboard=candidates,
            curves=Curves(reliability=self.reliability),
            diversity=Diversity(members=members, **self.diversity),
            config={"evaluation": evaluation},
            notes=[
                f"{self.split} split: {self.num_samples} samples; intervals: {self.confidence:.0%} percentile "
                f"bootstrap over {self.n_resamples} resamples, paired across rows"
            ],
        )


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _check_fused(name: str, values: np.ndarray, preds: Predictions) -> None:
    expected = (preds.num_samples, preds.num_classes) if preds.task == "classification" else (preds.num_samples,)
    if values.shape != expected:
        raise InvalidInputError(f"fused prediction {name!r} has shape {values.shape}, expected {expected}")
    if not np.isfinite(values).all():
        raise InvalidInputError(f"fused prediction {name!r} contains NaN/inf values")
    if preds.task == "classification" and not np.allclose(values.sum(axis=1), 1.0, atol=1e-4):
        raise InvalidInputError(f"fused prediction {name!r} must be probabilities (rows summing to 1)")


def _scored(values: np.ndarray, y: np.ndarray, task: Task, counts: np.ndarray, confidence: float, n_bins: int):
    """One candidate's metrics, per-sample losses and percentile intervals over the shared resamples."""
    if task == "classification":
        y_int = y.astype(int)
        metrics = classification_metrics(values, y_int, n_bins=n_bins)
        samples = per_sample_classification(values, y_int)
        resampled = {k: bootstrap_means(v, counts) for k, v in samples.items()}
    else:
        metrics = regression_metrics(values, y)
        samples = per_sample_regression(values, y)
        resampled = {
            "rmse": np.sqrt(bootstrap_means(samples["squared_error"], counts)),
            "mae": bootstrap_means(samples["absolute_error"], counts),
        }
    ci = {k: [float(b) for b in percentile_interval(v, confidence)] for k, v in resampled.items()}
    return metrics, samples, ci


def _best_member(rows: list[Row], preds: Predictions, given: str | None) -> str:
    """The member given, checked, or the best member by the primary metric (ties: NLL, or MAE)."""
    if given is not None:
        if given not in preds.member_names:
            raise InvalidInputError(f"best_member {given!r} is not a member; members are {list(preds.member_names)}")
        return given
    metric, higher = PRIMARY[preds.task]
    tie_break = "nll" if preds.task == "classification" else "mae"
    member_rows = [r for r in rows if r.kind == "member"]
    return sorted(member_rows, key=lambda r: ((-1 if higher else 1) * r.metrics[metric], r.metrics[tie_break]))[0].name


@checked
def evaluate(
    preds: Predictions,
    fused: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    *,
    best_member: str | None = None,
    confidence: Share = 0.95,
    n_resamples: Annotated[int, Field(ge=1, le=MAX_RESAMPLES)] = 1000,
    seed: int = 0,
    n_bins: PositiveInt = 15,
) -> Report:
    """Score members and fused predictions on the labelled split held by `preds`.

    Args:
        preds: member outputs with labels.
        fused: name -> fused probabilities `[N, C]` (classification) or values `[N]` (regression).
        best_member: the member each fusion is tested against. Default: the best member by the primary
            metric on this split, which is the hardest comparison for a fusion.
        confidence: level of the percentile bootstrap intervals.
        n_resamples: bootstrap resamples (shared by all rows, so intervals are paired), at most 100,000.
        seed: seed of the resamples.
        n_bins: bins of the expected calibration error.

    Returns:
        A `Report` with one `Row` per member and fusion, the best member, diversity diagnostics and (classification)
        each row's reliability curve.

    Example:
        >>> report = evaluate(test_preds, {"mean": fused_proba})
        >>> report.row("mean").vs_best_member["p_value"]
    """
    check_seed(seed)
    if preds.labels is None:
        raise InvalidInputError(f"predictions on split {preds.split!r} have no labels; nothing to score against")
    fused = dict(fused or {})
    clash = sorted(set(fused) & set(preds.member_names))
    if clash:
        raise InvalidInputError(f"fused predictions reuse member names {clash}; give fusions distinct names")
    y = preds.labels.numpy()
    classification = preds.task == "classification"
    members = _as_numpy(preds.probabilities(torch.float64) if classification else preds.outputs)
    candidates = {name: members[k] for k, name in enumerate(preds.member_names)}
    for name, values in fused.items():
        values = _as_numpy(values)
        _check_fused(name, values, preds)
        # Renormalize in float64: float32 probabilities sum to 1 only within ~1e-7.
        candidates[name] = values / values.sum(axis=1, keepdims=True) if classification else values

    counts = bootstrap_counts(preds.num_samples, n_resamples=n_resamples, seed=seed)
    rows, per_sample, reliability = [], {}, {}
    for name, values in candidates.items():
        metrics, samples, ci = _scored(values, y, preds.task, counts, confidence, n_bins)
        if classification:
            reliability[name] = reliability_curve(values, y.astype(int), n_bins)
        per_sample[name] = samples
        rows.append(Row(name, "fusion" if name in fused else "member", metrics, ci))

    best_member = _best_member(rows, preds, best_member)
    best = per_sample[best_member]
    for row in rows:
        if row.kind == "fusion":
            own = per_sample[row.name]
            row.vs_best_member = (
                mcnemar_exact(own["accuracy"], best["accuracy"])
                if classification
                else paired_bootstrap_test(own["squared_error"], best["squared_error"], counts, confidence)
            )
            row.vs_best_member["against"] = best_member
    return Report(
        task=preds.task,
        split=preds.split,
        num_samples=preds.num_samples,
        confidence=confidence,
        n_resamples=n_resamples,
        best_member=best_member,
        rows=rows,
        diversity=diversity(members, y.astype(int) if classification else y, preds.task),
        reliability=reliability,
    )
