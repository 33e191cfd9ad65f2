"""Cascades (progressive fusion): models that run one after another.

- `Cascade`: a confidence cascade. The cheapest model sees every sample; a sample goes on to the next model
  only while the current one's top probability is below its threshold, so easy samples cost little.
- `Chained`: sequential fusion, where one model's output (or features) becomes part of the next one's input.
"""

from __future__ import annotations

import copy
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._checks import checked
from .._modules import freeze, output_width, truncate
from ..datasets import Dataset
from ..errors import ConfigError, InvalidInputError, NotFittedError
from ..members import Member, as_member
from ..plotting import cascade_figure, save_figure
from ..predictions import Predictions, check_fit_labels, check_fit_split, collect_predictions
from ..results import Candidate, Cost, Curves, Results, Verdict, versions

__all__ = [
    "Cascade",
    "CascadeResult",
    "CascadeRun",
    "run_cascade",
    "Chained",
    "measured_costs",
    "plot_cascade_curve",
]

GRID = 200  # candidate thresholds per stage: quantiles of its validation confidences
EXHAUSTIVE = 250_000  # threshold combinations searched exhaustively


@dataclass
class CascadeResult:
    """Per sample: the probabilities of the model that decided, which stage decided, and the cost paid."""

    proba: torch.Tensor  # [N, C]
    stage: torch.Tensor  # [N] int64
    cost: torch.Tensor  # [N] float64

    def accuracy(self, y: torch.Tensor) -> float:
        return (self.proba.argmax(1) == y).double().mean().item()

    @property
    def mean_cost(self) -> float:
        return self.cost.mean().item()


def _check_thresholds(thresholds: Sequence[float], stages: int) -> list[float]:
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != stages - 1:
        raise ConfigError(f"a cascade of {stages} models needs {stages - 1} thresholds, got {len(thresholds)}")
    outside = [t for t in thresholds if not 0.0 <= t <= 1.0]
    if outside:
        raise ConfigError(f"thresholds are probabilities and must lie in [0, 1], got {outside}")
    return thresholds


def measured_costs(models: Sequence, X: torch.Tensor, *, repeats: int = 5) -> list[float]:
    """Each model's CPU time per sample in microseconds (the best of `repeats` batch runs on `X`, after one
    warm-up): costs for `Cascade` when nothing better (FLOPs, a price) is known."""
    costs = []
    for i, model in enumerate(models):
        member = as_member(model, name=f"stage_{i}")
        member.predict(X)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            member.predict(X)
            best = min(best, time.perf_counter() - started)
        costs.append(best / len(X) * 1e6)
    return costs


class Cascade:
    """Confidence cascade over K models ordered cheapest first (the idea of Viola and Jones, 2001, applied to
    classifiers' confidence as in Wang et al., 2018, "IDK cascades").

    Stage k decides a sample when its top probability is at least `thresholds[k]`; the last model decides the
    rest. A sample that stops at stage k costs `costs[0] + ... + costs[k]` (every model before it ran too).

    Args:
        thresholds: K-1 thresholds in [0, 1]; if None, `fit` chooses them on validation predictions.
        costs: the cost of running each model on one sample (e.g. seconds or FLOPs); default 1 each, so the
            cost is the number of models run.
        target_accuracy: `fit` finds the cheapest thresholds whose validation accuracy reaches it (default:
            the last, most expensive model's validation accuracy).
        budget: instead, `fit` finds the most accurate thresholds whose mean validation cost is within it.
    """

    def __init__(
        self,
        thresholds: Sequence[float] | None = None,
        *,
        costs: Sequence[float] | None = None,
        target_accuracy: float | None = None,
        budget: float | None = None,
    ) -> None:
        if target_accuracy is not None and budget is not None:
            raise ConfigError("give a target accuracy or a cost budget, not both")
        if target_accuracy is not None and not 0.0 <= target_accuracy <= 1.0:
            raise ConfigError(f"target_accuracy must lie in [0, 1], got {target_accuracy}")
        self.thresholds = thresholds
        self.costs = costs
        self.target_accuracy = target_accuracy
        self.budget = budget

    def _costs(self, stages: int) -> np.ndarray:
        costs = np.ones(stages) if self.costs is None else np.asarray(self.costs, dtype=np.float64)
        if costs.shape != (stages,) or (costs < 0).any():
            raise ConfigError(f"costs must be {stages} non-negative numbers, one per model, got {self.costs}")
        return costs

    # -- choosing thresholds ---------------------------------------------------------------------------
    def fit(self, val: Predictions) -> Cascade:
        """Choose the thresholds on validation predictions (members in cascade order); test predictions are
        refused (`LeakageError`)."""
        check_fit_split(val, "cascade")
        proba = val.probabilities(torch.float64).numpy()  # [K, N, C]
        if val.task != "classification" or val.labels is None:
            raise InvalidInputError("a cascade is fitted on labelled classification predictions")
        check_fit_labels(val.labels, val.task, "cascade")
        if len(proba) < 2:
            raise InvalidInputError("a cascade needs at least two models")
        correct = proba.argmax(2) == val.labels.numpy()  # [K, N]
        confidence = proba.max(2)  # [K, N]
        costs = self._costs(len(proba))
        if self.thresholds is not None:
            self.thresholds_ = _check_thresholds(self.thresholds, len(proba))
        else:
            target = self.target_accuracy if self.budget is None else None
            if target is None and self.budget is None:
                target = correct[-1].mean()
            self.thresholds_ = _search(confidence, correct, costs, target, self.budget)
        self.member_names_ = val.member_names
        accuracy, cost = _score(confidence, correct, costs, self.thresholds_)
        self.val_accuracy_, self.val_cost_ = float(accuracy), float(cost)
        return self

    # -- running ---------------------------------------------------------------------------------------
    def _fitted(self, stages: int) -> list[float]:
        if not hasattr(self, "thresholds_"):
            if self.thresholds is None:
                raise NotFittedError("the cascade has no thresholds yet; give them or call fit(val_predictions)")
            self.thresholds_ = _check_thresholds(self.thresholds, stages)
        if len(self.thresholds_) != stages - 1:
            raise InvalidInputError(f"the cascade has {len(self.thresholds_) + 1} stages but got {stages} models")
        return self.thresholds_

    def route(self, preds: Predictions) -> CascadeResult:
        """The cascade's decisions from every model's saved predictions (for evaluation and curves)."""
        proba = preds.probabilities(torch.float64)
        thresholds = self._fitted(len(proba))
        stage = _exit_stage(proba.max(2).values.numpy(), thresholds)
        stage = torch.from_numpy(stage)
        chosen = proba[stage, torch.arange(proba.shape[1])]
        cumulative = torch.from_numpy(np.cumsum(self._costs(len(proba))))
        return CascadeResult(chosen, stage, cumulative[stage])

    def predict(self, models: Sequence, X: torch.Tensor) -> CascadeResult:
        """Run the cascade for real: each model only sees the samples still undecided.

        `models` are members, torch modules or scikit-learn classifiers, cheapest first."""
        members = [as_member(m, name=f"stage_{i}") for i, m in enumerate(models)]
        thresholds = self._fitted(len(members))
        cumulative = torch.from_numpy(np.cumsum(self._costs(len(members))))
        pending = torch.arange(len(X))
        proba: torch.Tensor | None = None
        stage = torch.full((len(X),), len(members) - 1, dtype=torch.int64)
        for k, member in enumerate(members):
            if len(pending) == 0:
                break
            p = torch.softmax(member.predict(X[pending]).double(), dim=1)
            if proba is None:
                proba = torch.zeros(len(X), p.shape[1], dtype=torch.float64)
            done = p.max(1).values >= thresholds[k] if k < len(thresholds) else torch.ones(len(p), dtype=torch.bool)
            proba[pending[done]] = p[done]
            stage[pending[done]] = k
            pending = pending[~done]
        return CascadeResult(proba, stage, cumulative[stage])

    def curve(self, preds: Predictions, points: int = 51) -> list[dict[str, float]]:
        """Accuracy against mean cost per sample as one threshold, shared by every stage, goes from 0 to 1."""
        if preds.labels is None:
            raise InvalidInputError("a cascade curve needs labelled predictions")
        proba = preds.probabilities(torch.float64).numpy()
        correct, confidence = proba.argmax(2) == preds.labels.numpy(), proba.max(2)
        costs = self._costs(len(proba))
        rows = []
        for threshold in np.linspace(0.0, 1.0, points):
            accuracy, cost = _score(confidence, correct, costs, [threshold] * (len(proba) - 1))
            rows.append({"threshold": float(threshold), "accuracy": float(accuracy), "mean_cost": float(cost)})
        return rows


@dataclass
class CascadeRun:
    """A cascade fitted on validation and run for real on test (`run_cascade`): each model's cost per sample,
    the routed test predictions, each model alone on test, and the validation curve."""

    cascade: Cascade
    costs: list[float]
    test: CascadeResult
    alone: Predictions  # every model on the whole test split
    curve: list[dict[str, float]]  # `Cascade.curve` on validation

    @property
    def names(self) -> list[str]:
        return list(self.alone.member_names)

    @property
    def shares(self) -> list[float]:
        """The share of the test samples each stage decided."""
        return [float((self.test.stage == k).double().mean()) for k in range(len(self.names))]

    def accuracy_alone(self, k: int) -> float:
        return float((self.alone.outputs[k].argmax(1) == self.alone.labels).double().mean())

    def lines(self) -> list[str]:
        """What each stage decided, and the cascade against its last model alone, in words."""
        thresholds = self.cascade.thresholds_
        lines = [
            f"stage {k}: {name} (cost {self.costs[k]:.3g}), "
            f"{f'threshold {thresholds[k]:.3f}' if k < len(thresholds) else 'last'}: decides {share:.1%} of the "
            "test samples"
            for k, (name, share) in enumerate(zip(self.names, self.shares, strict=True))
        ]
        accuracy = self.test.accuracy(self.alone.labels)
        lines.append(
            f"test accuracy {accuracy:.3f} at mean cost {self.test.mean_cost:.3g}; the last model alone: "
            f"{self.accuracy_alone(-1):.3f} at {self.costs[-1]:.3g} (thresholds chosen on validation: accuracy "
            f"{self.cascade.val_accuracy_:.3f}, cost {self.cascade.val_cost_:.3g})"
        )
        return lines

    def results(self, *, seed: int = 0) -> Results:
        """The run in the one results schema: each model alone and the cascade (cost per sample in the costs'
        units; the cascade's thresholds and each stage's share of the test samples in `details`), scored on
        test with bootstrap intervals, and the cascade tested against its last model alone (McNemar)."""
        from ..evaluate.stats import mcnemar_exact, scores_with_intervals

        y = self.alone.labels.numpy()
        proba = self.alone.probabilities(torch.float64).numpy()
        candidates = [
            Candidate(
                name=name,
                family="member",
                test=scores_with_intervals(proba[k], y, seed=seed),
                cost=Cost(per_sample=self.costs[k], forward_passes=1),
            )
            for k, name in enumerate(self.names)
        ]
        name = "cascade " + " -> ".join(self.names)
        cascade_proba = self.test.proba.numpy()
        versus = mcnemar_exact(cascade_proba.argmax(1) == y, proba[-1].argmax(1) == y)
        cascade = Candidate(
            name=name,
            family="cascade",
            val={"accuracy": self.cascade.val_accuracy_},
            test=scores_with_intervals(cascade_proba, y, seed=seed),
            cost=Cost(
                per_sample=self.test.mean_cost, forward_passes=float(1 + (self.test.stage > 0).double().sum() / len(y))
            ),
            p_vs_best_member=versus["p_value"],
            details={
                "thresholds": self.cascade.thresholds_,
                "decided_by_stage": self.shares,
                "val_mean_cost": self.cascade.val_cost_,
            },
        )
        return Results(
            chosen=cascade,
            leaderboard=[*candidates, cascade],
            verdict=Verdict(
                best_member=self.names[-1],
                chosen=name,
                p_value=versus["p_value"],
                subject="cascade",
                baseline="last model alone",
            ),
            curves=Curves(cascade={name: self.curve}),
            config={
                "costs": self.costs,
                "target_accuracy": self.cascade.target_accuracy,
                "budget": self.cascade.budget,
            },
            versions=versions(),
            notes=[
                "thresholds chosen on validation; the test split only scores (95% percentile bootstrap intervals, "
                "McNemar's exact test against the last model alone); cost: per sample, in the costs' units"
            ],
        )


@checked
def run_cascade(
    members: Sequence[Member],
    data: Dataset,
    *,
    costs: Sequence[float] | None = None,
    target_accuracy: float | None = None,
    budget: float | None = None,
) -> CascadeRun:
    """Fit a `Cascade` of `members` (cheapest first) on `data.val` and run it for real on `data.test`.

    `costs` default to each member's measured CPU time per sample on the validation inputs (`measured_costs`);
    the thresholds reach `target_accuracy` (default: the last member's validation accuracy) at the least cost,
    or the best accuracy within `budget`.

    Example:
        >>> run = run_cascade([logreg, cnn], load_dataset("digits"), costs=[1, 20])
        >>> run.results().save("cascade.json")
    """
    val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)  # clear errors first
    per_sample = [float(c) for c in costs] if costs is not None else measured_costs(members, data.val.X)
    fitted = Cascade(costs=per_sample, target_accuracy=target_accuracy, budget=budget).fit(val)
    routed = fitted.predict(members, data.test.X)
    alone = collect_predictions(members, data.test.X, data.test.y, "test", progress=False)
    return CascadeRun(fitted, per_sample, routed, alone, fitted.curve(val))


def _exit_stage(confidence: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """`confidence` `[K, N]` -> the first stage whose confidence reaches its threshold (else the last)."""
    reached = confidence[:-1] >= np.asarray(thresholds, dtype=np.float64).reshape(-1, 1)  # [K-1, N]
    reached = np.vstack([reached, np.ones((1, confidence.shape[1]), dtype=bool)])  # the last stage always decides
    return reached.argmax(0).astype(np.int64)


def _score(confidence, correct, costs, thresholds) -> tuple[float, float]:
    stage = _exit_stage(confidence, thresholds)
    columns = np.arange(confidence.shape[1])
    return correct[stage, columns].mean(), np.cumsum(costs)[stage].mean()


def _search(confidence, correct, costs, target: float | None, budget: float | None) -> list[float]:
    """The best thresholds among each stage's candidates: every combination when there are at most
    `EXHAUSTIVE` of them (always for two or three models), else coordinate descent from the exhaustive
    answer's corner (all thresholds 1)."""
    grids = [np.unique(np.concatenate([np.quantile(c, np.linspace(0, 1, GRID)), [0.0, 1.0]])) for c in confidence[:-1]]

    def key(thresholds):
        accuracy, cost = _score(confidence, correct, costs, thresholds)
        if target is not None:  # reach the target, then be cheap; short of it, get closer
            return (1, -cost, accuracy) if accuracy >= target - 1e-12 else (0, accuracy, -cost)
        return (1, accuracy, -cost) if cost <= budget + 1e-12 else (0, -cost, accuracy)

    if np.prod([len(g) for g in grids], dtype=np.float64) <= EXHAUSTIVE:
        thresholds = list(max(itertools.product(*grids), key=key))
    else:
        thresholds = [1.0] * len(grids)
        improved = True
        while improved:
            improved = False
            for k, grid in enumerate(grids):
                for candidate in grid:
                    trial = thresholds[:k] + [float(candidate)] + thresholds[k + 1 :]
                    if key(trial) > key(thresholds):
                        thresholds, improved = trial, True
    thresholds = [float(t) for t in thresholds]
    if key(thresholds)[0] == 0:
        reached, cost = _score(confidence, correct, costs, thresholds)
        goal = f"validation accuracy {target:.4f}" if target is not None else f"mean cost {budget}"
        raise InvalidInputError(
            f"no thresholds reach {goal}; the best found gives accuracy {reached:.4f} at mean cost {cost:.3g}"
        )
    return thresholds


class Chained(nn.Module):
    """Sequential fusion: `second(concat(x, first(x)))`, the first model's output (or the features of its
    module `at`) appended to the input (or alone, with `pass_input=False`).

    Args:
        first: the earlier model (frozen by default, and kept in eval mode then).
        second: the later model, or a function of its input width that builds it.
        example_input: a small batch, for the widths.
    """

    def __init__(
        self,
        first: nn.Module,
        second: nn.Module | Callable[[int], nn.Module],
        example_input: torch.Tensor,
        *,
        at: str | None = None,
        pass_input: bool = True,
        freeze_first: bool = True,
    ) -> None:
        super().__init__()
        first = copy.deepcopy(first)  # freezing it leaves the caller's model alone
        self.first = truncate(first, at) if at is not None else first
        self.pass_input = pass_input
        self.frozen = freeze_first
        if freeze_first:
            freeze([self.first])
        width = output_width(self.first, example_input, "the first model") + (
            example_input[0].numel() if pass_input else 0
        )
        self.second = second if isinstance(second, nn.Module) else second(width)
        self.in_width = width

    def train(self, mode: bool = True) -> Chained:
        super().train(mode)
        if self.frozen:
            self.first.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x.flatten(1)] if self.pass_input else []
        parts.append(self.first(x).flatten(1))
        return self.second(torch.cat(parts, dim=1))


def plot_cascade_curve(
    curves: dict[str, list[dict[str, float]]], path: str | os.PathLike, *, title: str = "Cascade"
) -> Path:
    """Accuracy against mean cost per sample, one line per curve name, saved as an image (needs the
    `report` extra)."""
    return save_figure(cascade_figure(curves, title=title), path)
