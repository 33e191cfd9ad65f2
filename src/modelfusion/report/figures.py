"""The report's figures, each an inline `<svg>` string: reliability, accuracy against cost, diversity, and the
interpolation and cascade curves. Points that are not finite numbers are left out of every plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..plotting import cascade_figure, interpolation_figure, pyplot, search_figure, svg_markup
from ..results import Candidate, Diversity, ReliabilityCurve
from .leaderboard import finite

__all__ = [
    "reliability_svg",
    "pareto_svg",
    "diversity_svg",
    "interpolation_svg",
    "cascade_svg",
    "search_svg",
    "pareto_front",
]


def reliability_points(curve: ReliabilityCurve) -> list[tuple[float, float, float]]:
    """(confidence, accuracy, samples) of each bin that holds samples and finite numbers."""
    bins = zip(curve.confidence, curve.accuracy, curve.count, strict=True)  # lengths checked on reading
    return [(c, a, n) for c, a, n in bins if finite(c, a, n) and n > 0]


def reliability_svg(curves: Mapping[str, ReliabilityCurve]) -> str:
    """Accuracy against confidence per bin, one line per model, beside the diagonal of perfect calibration; a
    marker's area grows with its bin's samples, so a bin of two samples does not look like a finding."""
    figure, axes = pyplot().subplots(figsize=(5, 4))
    axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for name, curve in curves.items():
        points = reliability_points(curve)
        if not points:
            continue
        most = max(n for _, _, n in points)
        (line,) = axes.plot([c for c, _, _ in points], [a for _, a, _ in points], linewidth=1, label=name)
        sizes = [6 + 90 * (n / most) for _, _, n in points]
        axes.scatter([c for c, _, _ in points], [a for _, a, _ in points], s=sizes, color=line.get_color(), alpha=0.8)
    axes.set(xlabel="confidence (top-label probability)", ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return svg_markup(figure, "reliability")


def pareto_front(points: Sequence[tuple[float, float]], *, higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (lower cost, better score), cheapest first."""
    sign = 1 if higher_is_better else -1
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if sign * points[i][1] > best:
            front.append(i)
            best = sign * points[i][1]
    return front


def pareto_svg(candidates: Sequence[Candidate], metric: str, cost: str, *, highlight: Sequence[str] = ()) -> str:
    """Test `metric` against `cost`, coloured by family, the Pareto front joined; the front's candidates and the
    `highlight`ed ones are labelled."""
    plt = pyplot()
    higher = metric != "rmse"
    scale = 100 if metric == "accuracy" else 1
    shown = [c for c in candidates if finite(getattr(c.cost, cost), c.test.get(metric))]
    points = [(getattr(c.cost, cost), c.test[metric] * scale) for c in shown]
    figure, axes = plt.subplots(figsize=(6, 4))
    _scatter_by_family(axes, points, [c.family for c in shown])
    front = pareto_front(points, higher_is_better=higher)
    axes.step([points[i][0] for i in front], [points[i][1] for i in front], where="post", color="0.4", linewidth=1)
    labelled = [i for i, candidate in enumerate(shown) if i in front or candidate.name in highlight]
    for i in labelled:
        axes.annotate(shown[i].name, points[i], textcoords="offset points", xytext=(4, 4), fontsize=8)
    _log_scale_if_spread(axes, [x for x, _ in points])
    axes.set(xlabel=cost.replace("_", " "), ylabel=f"test {metric}" + (" %" if scale == 100 else ""))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, title="family", title_fontsize=8)
    return svg_markup(figure, "pareto")


def _log_scale_if_spread(axes, costs: list[float]) -> None:
    """A log x axis when the costs span more than two orders of magnitude (members against fusions of ten)."""
    if min(costs) > 0 and max(costs) / min(costs) > 100:
        axes.set_xscale("log")


def _scatter_by_family(axes, points: list[tuple[float, float]], families: list[str]) -> None:
    """One colour per family, in the order the families first appear."""
    for family in dict.fromkeys(families):
        mine = [p for p, f in zip(points, families, strict=True) if f == family]
        axes.scatter([x for x, _ in mine], [y for _, y in mine], label=family, s=24, alpha=0.8)


def diversity_svg(diversity: Diversity) -> str:
    """The members' pairwise disagreement as a heatmap (the share of samples two members label differently)."""
    k = len(diversity.members)
    matrix = [[math.nan if v is None else v for v in row] for row in diversity.disagreement]
    size = min(3 + 0.45 * k, 9)
    figure, axes = pyplot().subplots(figsize=(size + 1, size))
    mesh = axes.pcolormesh(matrix, cmap="viridis", vmin=0)
    axes.set_xticks([i + 0.5 for i in range(k)], diversity.members, rotation=45, ha="right", fontsize=8)
    axes.set_yticks([i + 0.5 for i in range(k)], diversity.members, fontsize=8)
    axes.invert_yaxis()
    axes.set_aspect("equal")
    if k <= 12:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if math.isfinite(value):
                    axes.text(j + 0.5, i + 0.5, f"{value:.3f}", ha="center", va="center", fontsize=7, color="w")
    colorbar = figure.colorbar(mesh, ax=axes, label="disagreement")
    colorbar.solids.set_rasterized(False)  # matplotlib rasterizes long colorbars: an image the page may not load
    return svg_markup(figure, "diversity")


def _finite_rows(curves: Mapping[str, Sequence], keys: tuple[str, ...]) -> dict[str, list[dict]]:
    rows = {name: [p.model_dump() for p in points] for name, points in curves.items()}
    return {name: [r for r in points if finite(*(r[k] for k in keys))] for name, points in rows.items()}


def interpolation_svg(curves: Mapping[str, Sequence]) -> str:
    """Accuracy (and loss) along the straight line between two models' weights, one line per pair."""
    figure = interpolation_figure(_finite_rows(curves, ("alpha", "accuracy")), title="Interpolation")
    return svg_markup(figure, "interpolation")


def cascade_svg(curves: Mapping[str, Sequence]) -> str:
    """Accuracy against mean cost per sample as the cascade's threshold moves, one line per cascade."""
    return svg_markup(cascade_figure(_finite_rows(curves, ("mean_cost", "accuracy"))), "cascade")


def search_svg(curves: Mapping[str, Sequence], *, ylabel: str = "validation NLL") -> str:
    """A merge search's curve: each merge's validation value and the best so far, one line per search."""
    rows = {name: [p if isinstance(p, dict) else p.model_dump() for p in points] for name, points in curves.items()}
    finite_rows = {name: [r for r in points if finite(r["value"], r["best"])] for name, points in rows.items()}
    return svg_markup(search_figure(finite_rows, ylabel=ylabel), "merge search")
