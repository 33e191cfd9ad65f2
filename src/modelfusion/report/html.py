"""One self-contained HTML report of a fusion run: inline CSS and SVG figures, no script, nothing fetched.

Every string from the results (names of members, families, reasons, configuration) is escaped by the
template, so a member named `<script>...` shows as text.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic import atomic_path, check_output
from ..errors import MissingExtraError
from . import figures
from .plots import plain_text, pyplot
from .results import SIGNIFICANCE_LEVEL, Candidate, Results, load_results, parse_results

__all__ = ["write_report", "render_report", "check_report_extra"]

# metric -> (column header, scale, format); the first of each task is the primary metric and shows its interval.
METRICS = {
    "accuracy": ("accuracy %", 100, ".1f"),
    "nll": ("NLL", 1, ".3f"),
    "ece": ("ECE", 1, ".3f"),
    "rmse": ("RMSE", 1, ".4g"),
    "mae": ("MAE", 1, ".4g"),
    "r2": ("R²", 1, ".3f"),
}
# cost -> column header, in the order the Pareto plot prefers them as its x axis.
COSTS = {
    "latency_batch_1_us": "latency, batch 1 (µs)",
    "parameters": "parameters",
    "bytes": "bytes",
    "forward_passes": "forward passes",
}


def _number(value: Any, scale: float = 1, spec: str = ".4g") -> str:
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    if isinstance(value, int) and scale == 1:
        return f"{value:,}"
    return format(value * scale, spec)


def _cost(value: Any) -> str:
    """A cost as people read one: whole numbers with separators from 1,000 up (10,169 µs, 151,690
    parameters), else four significant digits (94.28 µs, 1.8 passes); past 1e15, where a float's digits
    run out, four significant digits again."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if 999.5 <= abs(value) < 1e15:
            return f"{value:,.0f}"
    return _number(value)


def _p_value(p: float | None) -> str:
    return _number(p, spec=".3g") if p is None or not math.isfinite(p) or p >= 1e-4 else f"{p:.1e}"


def _cell(scores: Mapping[str, Any], metric: str) -> str:
    _, scale, spec = METRICS[metric]
    text = _number(scores.get(metric), scale, spec)
    interval = scores.get(f"{metric}_ci")
    if isinstance(interval, tuple | list) and len(interval) == 2 and text != "–":
        text += f" [{_number(interval[0], scale, spec)}, {_number(interval[1], scale, spec)}]"
    return text


def _leaderboard(results: Results) -> dict:
    """Header and rows of the table, best first (on validation where every candidate has a score there, else on
    test), with the columns some candidate has a value for."""
    primary = results.primary_metric
    higher = primary != "rmse"
    candidates = results.leaderboard

    def has(where: str, key: str) -> bool:
        return any(getattr(c, where).get(key) is not None for c in candidates)

    tests = [m for m in METRICS if has("test", m)]
    costs = [c for c in COSTS if has("cost", c)]
    with_val = has("val", primary)
    with_p = any(c.p_vs_best_member is not None for c in candidates)

    # Ranked as the choice was made, on validation, when every candidate has a validation score (auto);
    # otherwise (ensemble, demo: members have none) on test, which then only orders the rows.
    ranked_on = "val" if all(figures.finite(c.val.get(primary)) for c in candidates) else "test"

    def rank_key(c: Candidate) -> float:
        value = getattr(c, ranked_on).get(primary)
        if not figures.finite(value):
            return math.inf
        return -value if higher else value

    header = ["#", "candidate", "family"]
    header += [f"val {METRICS[primary][0]}"] if with_val else []
    header += [f"test {METRICS[m][0]}" + (" [CI]" if m == primary else "") for m in tests]
    header += [COSTS[c] for c in costs] + (["p vs best member"] if with_p else [])
    best_member = results.verdict.best_member if results.verdict else None
    rows = []
    for rank, c in enumerate(sorted(candidates, key=rank_key), start=1):
        cells = [str(rank), c.name, c.family]
        cells += [_cell(c.val, primary)] if with_val else []
        cells += [_cell(c.test, m) if m == primary else _number(c.test.get(m), *METRICS[m][1:]) for m in tests]
        cells += [_cost(c.cost.get(k)) for k in costs]
        cells += [_p_value(c.p_vs_best_member)] if with_p else []
        mark = "chosen" if results.chosen and c.name == results.chosen.name else ""
        mark = mark or ("best-member" if c.name == best_member else "")
        rows.append({"cells": cells, "mark": mark})
    return {"header": header, "rows": rows, "ranked_on": "validation" if ranked_on == "val" else "test"}


def verdict_text(results: Results) -> str:
    """The verdict in plain language: is the chosen fusion significantly better than the best member?"""
    verdict, primary = results.verdict, results.primary_metric
    if verdict is None:
        return "No verdict: these results hold no test of the chosen fusion against the best member."
    by_name = {c.name: c for c in results.leaderboard}
    chosen, best = by_name.get(verdict.chosen), by_name.get(verdict.best_member)
    label, scale, spec = METRICS[primary]
    scores = ""
    if chosen is not None and best is not None:
        unit = " %" if scale == 100 else ""
        scores = (
            f" (test {label.removesuffix(' %')}: {_number(chosen.test.get(primary), scale, spec)}{unit} against "
            f"{_number(best.test.get(primary), scale, spec)}{unit})"
        )
    p = f"p = {_p_value(verdict.p_value)}" if verdict.p_value is not None else "no p-value recorded"
    if verdict.chosen == verdict.best_member:
        return f"The chosen model is the best member, {verdict.chosen}: no fusion beat it on validation{scores}."
    if verdict.significant is None:
        outcome = "was not tested against"
    elif not verdict.significant:
        outcome = "is not significantly better than"
    else:
        better = chosen is None or best is None or _beats(chosen, best, primary)
        outcome = "is significantly better than" if better else "is significantly worse than"
    return (
        f"The chosen fusion, {verdict.chosen}, {outcome} the best member, {verdict.best_member}{scores}: "
        f"{verdict.test}, {p}, at significance level {SIGNIFICANCE_LEVEL}."
    )


def _beats(a: Candidate, b: Candidate, metric: str) -> bool:
    x, y = a.test.get(metric), b.test.get(metric)
    if x is None or y is None:
        return True
    return x > y if metric != "rmse" else x < y


def _pareto_cost(results: Results) -> str | None:
    """The cost most candidates have a finite value of (ties: the order of `COSTS`), or None."""
    counts = {
        key: sum(1 for c in results.leaderboard if figures.finite(c.cost.get(key), c.test.get(results.primary_metric)))
        for key in COSTS
    }
    key = max(counts, key=lambda k: counts[k])
    return key if counts[key] else None


def _sections(results: Results) -> tuple[list[dict], list[str]]:
    """The figures these results have data for, and a line for each they lack."""
    shown, missing = [], []
    curves = results.curves
    named = (results.chosen and results.chosen.name, results.verdict and results.verdict.best_member)
    highlight = [name for name in named if name]

    def section(title: str, available: bool, lacking: str, draw, caption: str) -> None:
        if not available:
            missing.append(f"{title}: {lacking}")
            return
        try:
            with plain_text():
                svg = draw()
        except (ValueError, TypeError, OverflowError, ZeroDivisionError, IndexError) as err:
            # what a results file may hold but matplotlib cannot draw (1e308 on an axis, a diversity matrix of
            # no members); the rest of the page still says what it can
            missing.append(f"{title}: cannot be drawn from these results ({type(err).__name__})")
            return
        shown.append({"title": title, "svg": svg, "caption": caption})

    drawable = {n: c for n, c in curves.reliability.items() if figures.reliability_points(c)}
    reliability = {n: c for n, c in drawable.items() if n in highlight} or drawable
    section(
        "Reliability diagram",
        bool(reliability),
        "no reliability curves in these results (classification results of this version have them)",
        lambda: figures.reliability_svg(reliability),
        "Accuracy against confidence per confidence bin on the test split; a calibrated model lies on the "
        "diagonal, and a marker's area grows with the samples in its bin. Shown: " + ", ".join(reliability) + ".",
    )
    cost = _pareto_cost(results)
    section(
        "Accuracy against cost" if results.primary_metric == "accuracy" else "Error against cost",
        cost is not None,
        "no candidate has a cost",
        lambda: figures.pareto_svg(results.leaderboard, results.primary_metric, cost, highlight=highlight),
        f"Test {results.primary_metric} against {COSTS.get(cost, '')}; the line joins the Pareto front (no "
        "candidate is both cheaper and better).",
    )
    section(
        "Diversity of the members",
        results.diversity is not None,
        "no disagreement matrix in these results",
        lambda: figures.diversity_svg(results.diversity),
        _diversity_caption(results),
    )
    section(
        "Interpolation between merged models",
        bool(curves.interpolation),
        "no merge ran, so there is no interpolation curve",
        lambda: figures.interpolation_svg(curves.interpolation),
        "Accuracy (and loss) of the weights (1 - alpha) A + alpha B; a dip in the middle is the barrier a merge "
        "must cross.",
    )
    section(
        "Cascade",
        bool(curves.cascade),
        "no cascade ran, so there is no cascade curve",
        lambda: figures.cascade_svg(curves.cascade),
        "Accuracy against mean cost per sample as the confidence threshold for passing a sample on goes from 0 to 1.",
    )
    section(
        "Merge search",
        bool(curves.search),
        "no merge search ran, so there is no search curve",
        lambda: figures.search_svg(curves.search),
        "Validation NLL of each merge the search scored (dots) and the best so far (line), as CMA-ES tunes the "
        "merged members' weights.",
    )
    return shown, missing


def _diversity_caption(results: Results) -> str:
    caption = "The share of test samples on which two members predict different classes."
    d = results.diversity
    if d is None:
        return caption
    facts = [
        f"{label} {_number(value, spec='.3f')}"
        for label, value in (
            ("oracle accuracy", d.oracle_accuracy),
            ("mean pairwise disagreement", d.mean_disagreement),
            ("mean error correlation", d.mean_error_correlation),
        )
        if value is not None
    ]
    return caption + (" " + ", ".join(facts).capitalize() + "." if facts else "")


def check_report_extra() -> None:
    """Raise `MissingExtraError` unless what the report needs (matplotlib and jinja2) is installed: commands
    call it before their work, so that a missing extra costs no training."""
    pyplot()
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise MissingExtraError("the HTML report needs jinja2: pip install 'modelfusion[report]'") from None


def render_report(results: Results) -> str:
    """The report of `results` as one HTML document (needs the `report` extra: matplotlib and jinja2)."""
    check_report_extra()
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("modelfusion.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    shown, missing = _sections(results)
    return environment.get_template("report.html").render(
        results=results,
        verdict=verdict_text(results),
        significant=bool(results.verdict and results.verdict.significant),
        table=_leaderboard(results),
        figures=[{**f, "svg": jinja2.utils.markupsafe.Markup(f["svg"])} for f in shown],
        missing=missing,
        config=json.dumps(results.config, indent=2, default=str) if results.config else "",
    )


def write_report(
    results: Results | Mapping | str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write the HTML report of `results` to `path`, atomically.

    Args:
        results: a results.json path (of `modelfusion auto`, `ensemble` or `demo`), its parsed content, or
            `Results`. The shape: `chosen` and `leaderboard` (candidates with `name`, `family`, `val`, `test`,
            `cost`) are required; `verdict`, `curves` (`reliability`, `interpolation`, `cascade`), `diversity`,
            `skipped`, `config` and `versions` are shown when present (see `modelfusion.report.results`).
        path: the .html file to write; an existing one is replaced only with `overwrite`.

    Returns:
        `path`.

    Example:
        >>> write_report("runs/demo/results.json", "runs/demo/report.html")
    """
    source = None
    if isinstance(results, str | os.PathLike):
        source = results
        results = load_results(results)
    elif not isinstance(results, Results):
        results = parse_results(results)
    path = Path(path)
    check_output(path, kind="file", overwrite=overwrite, inputs=[source])
    html = render_report(results)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path
