"""One self-contained HTML report of a fusion run: inline CSS and SVG figures, no script, nothing fetched.

Every string from the results (names of members, families, reasons, configuration) is escaped by the
template, so a member named `<script>...` shows as text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .._atomic import atomic_path, check_output
from .._checks import checked
from ..errors import MissingExtraError
from ..plotting import plain_text, pyplot
from ..results import Results, load_results, parse_results
from . import figures
from .leaderboard import COSTS, finite, leaderboard, number, verdict_text

__all__ = ["write_report", "render_report", "check_report_extra", "verdict_text"]


def _pareto_cost(results: Results) -> str | None:
    """The cost most candidates have a finite value of (ties: the order of `COSTS`), or None."""
    counts = {
        key: sum(1 for c in results.leaderboard if finite(getattr(c.cost, key), c.test.get(results.primary_metric)))
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
        results.diversity is not None and results.diversity.disagreement is not None,
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
        f"{label} {number(value, spec='.3f')}"
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
        table=leaderboard(results),
        figures=[{**f, "svg": jinja2.utils.markupsafe.Markup(f["svg"])} for f in shown],
        missing=missing,
        config=json.dumps(results.config, indent=2, default=str) if results.config else "",
    )


@checked
def write_report(
    results: Results | Mapping | str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write the HTML report of `results` to `path`, atomically.

    Args:
        results: a results.json path (any command's), its parsed content, or
            `Results`. The shape: `chosen` and `leaderboard` (candidates with `name`, `family`, `val`, `test`,
            `cost`) are required; `verdict`, `curves` (`reliability`, `interpolation`, `cascade`), `diversity`,
            `skipped`, `config` and `versions` are shown when present (see `modelfusion.results`).
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
