"""Interpolating between two models: the loss and accuracy curve along the straight line, and its barrier."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..datasets import Split
from ..plotting import interpolation_figure, save_figure
from ..training import score_classifier

__all__ = [
    "lerp_state",
    "interpolated_model",
    "midpoint_accuracy",
    "interpolation_curve",
    "barriers",
    "plot_interpolation",
]


def lerp_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> dict:
    """`(1 - alpha) * a + alpha * b` for floating tensors; integer buffers come from `a`."""
    return {k: torch.lerp(v, b[k].to(v.dtype), alpha) if v.is_floating_point() else v for k, v in a.items()}


def interpolated_model(a: nn.Module, b: Mapping[str, torch.Tensor] | nn.Module, alpha: float) -> nn.Module:
    """A copy of `a` with the interpolated weights (neither input changes)."""
    b_state = b.state_dict() if isinstance(b, nn.Module) else b
    model = copy.deepcopy(a)
    model.load_state_dict(lerp_state(a.state_dict(), b_state, alpha))
    return model.eval()


def midpoint_accuracy(a: nn.Module, b: nn.Module, split: Split) -> float:
    """Accuracy on `split` of the 50/50 weight average of `a` and `b`: what averaging them gives, before
    alignment (naive) or after (`b` permuted into `a`'s unit order)."""
    return score_classifier(interpolated_model(a, b, 0.5), split)["accuracy"]


def interpolation_curve(
    a: nn.Module,
    b: nn.Module,
    split: Split,
    *,
    points: int = 11,
    fix: Callable[[nn.Module, float], nn.Module] | None = None,
) -> list[dict[str, float]]:
    """Loss and accuracy on `split` at `points` evenly spaced alphas from `a` (0) to `b` (1).

    `fix(model, alpha)` runs on each interpolated model first (e.g. REPAIR against the two endpoints).
    """
    rows = []
    for alpha in torch.linspace(0, 1, points).tolist():
        model = interpolated_model(a, b, alpha)
        if fix is not None and 0 < alpha < 1:
            model = fix(model, alpha)
        rows.append({"alpha": alpha, **score_classifier(model, split)})
    return rows


def barriers(curve: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The loss barrier (the highest rise of the loss above the straight line between the endpoints' losses)
    and the accuracy barrier (the deepest fall of accuracy below the line between the endpoints')."""
    first, last = curve[0], curve[-1]

    def line(key, alpha):
        return (1 - alpha) * first[key] + alpha * last[key]

    return {
        "loss_barrier": max(r["loss"] - line("loss", r["alpha"]) for r in curve),
        "accuracy_barrier": max(line("accuracy", r["alpha"]) - r["accuracy"] for r in curve),
    }


def plot_interpolation(
    curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike, *, title: str = "Interpolation"
) -> Path:
    """Loss and accuracy against alpha, one line per curve name (needs the `report` extra)."""
    return save_figure(interpolation_figure(curves, title=title), path)
