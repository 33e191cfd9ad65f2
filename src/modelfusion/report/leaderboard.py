"""The leaderboard of a run's `Results`: one table (header, ranked rows, which rows are marked) that the terminal
(`leaderboard_table`, `print_leaderboard`) and the HTML page (`render_report`) both render, and the verdict in
plain words."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .._deprecation import deprecated
from .._terminal import terminal_console, terminal_text
from ..errors import ArgumentError
from ..results import SIGNIFICANCE_LEVEL, Candidate, Results, parse_results

__all__ = ["Leaderboard", "leaderboard", "leaderboard_table", "print_leaderboard", "verdict_text", "diversity_summary"]

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
    "per_sample": "cost per sample",
    "parameters": "parameters",
    "bytes": "bytes",
    "forward_passes": "forward passes",
}


def finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def number(value: Any, scale: float = 1, spec: str = ".4g") -> str:
    if not finite(value):
        return "–"
    if isinstance(value, int) and scale == 1:
        return f"{value:,}"
    return format(value * scale, spec)


def cost_text(value: Any) -> str:
    """A cost as people read one: whole numbers with separators from 1,000 up (10,169 µs, 151,690
    parameters), else four significant digits (94.28 µs, 1.8 passes); past 1e15, where a float's digits
    run out, four significant digits again."""
    if finite(value) and 999.5 <= abs(value) < 1e15:
        return f"{value:,.0f}"
    return number(value)


def p_value_text(p: float | None) -> str:
    return number(p, spec=".3g") if not finite(p) or p >= 1e-4 else f"{p:.1e}"


def _cell(scores: Mapping[str, Any], metric: str) -> str:
    _, scale, spec = METRICS[metric]
    text = number(scores.get(metric), scale, spec)
    interval = scores.get(f"{metric}_ci")
    if isinstance(interval, tuple | list) and len(interval) == 2 and text != "–":
        text += f" [{number(interval[0], scale, spec)}, {number(interval[1], scale, spec)}]"
    return text


@dataclass(frozen=True)
class Leaderboard:
    """The table of a run: `rows` best first, each `{"cells": [...], "mark": "chosen" | "best-member" | ""}`."""

    header: list[str]
    rows: list[dict]
    ranked_on: str  # "validation" or "test"
    title: str


def _has(candidates: list[Candidate], where: str, key: str) -> bool:
    if where == "cost":
        return any(getattr(c.cost, key) is not None for c in candidates)
    return any(getattr(c, where).get(key) is not None for c in candidates)


def _columns(results: Results) -> list[tuple[str, Callable[[Candidate], str]]]:
    """The score, cost and test columns some candidate has a value for: (header, the cell of a candidate)."""
    primary, candidates = results.primary_metric, results.leaderboard
    columns = []
    if _has(candidates, "val", primary):
        columns.append((f"val {METRICS[primary][0]}", lambda c: _cell(c.val, primary)))
    for metric in (m for m in METRICS if _has(candidates, "test", m)):
        label, scale, spec = METRICS[metric]
        if metric == primary:
            columns.append((f"test {label} [CI]", lambda c, m=metric: _cell(c.test, m)))
        else:
            columns.append((f"test {label}", lambda c, m=metric, f=(scale, spec): number(c.test.get(m), *f)))
    for key in (k for k in COSTS if _has(candidates, "cost", k)):
        columns.append((COSTS[key], lambda c, k=key: cost_text(getattr(c.cost, k))))
    if any(c.p_vs_best_member is not None for c in candidates):
        columns.append(("p vs best member", lambda c: p_value_text(c.p_vs_best_member)))
    return columns


def _ranked(results: Results) -> tuple[list[Candidate], str]:
    """The candidates best first, on validation where every one has a score there (auto: the choice was made
    there), else on test, which then only orders the rows (members of an ensemble run have no validation
    score); and which split ranked them."""
    primary = results.primary_metric
    split = "val" if all(finite(c.val.get(primary)) for c in results.leaderboard) else "test"
    sign = -1 if primary != "rmse" else 1

    def key(c: Candidate) -> float:
        value = getattr(c, split).get(primary)
        return sign * value if finite(value) else math.inf

    return sorted(results.leaderboard, key=key), "validation" if split == "val" else "test"


def leaderboard(results: Results) -> Leaderboard:
    """The leaderboard of `results`, best first (`_ranked`), with the columns some candidate has a value for;
    the chosen candidate's row and the best member's are marked."""
    columns = _columns(results)
    ranked, ranked_on = _ranked(results)
    marks = {results.verdict.best_member: "best-member"} if results.verdict else {}
    marks.update({results.chosen.name: "chosen"} if results.chosen else {})
    rows = [
        {"cells": [str(rank), c.name, c.family, *(cell(c) for _, cell in columns)], "mark": marks.get(c.name, "")}
        for rank, c in enumerate(ranked, start=1)
    ]
    title = f"Leaderboard: {len(ranked)} candidates ranked on {ranked_on}, scored on test"
    return Leaderboard(["#", "candidate", "family", *(header for header, _ in columns)], rows, ranked_on, title)


# The terminal shows the page's table abbreviated to fit about 120 columns: shorter headers, and without the
# columns the page adds for the curious (calibration error, parameters).
SHORT = {"latency, batch 1 (µs)": "µs, batch 1", "forward passes": "passes", "p vs best member": "p vs best"}
PAGE_ONLY = ("test ECE", "parameters")


def leaderboard_table(results: Results) -> Table:
    """`leaderboard(results)` as a rich table for the terminal; the chosen row is bold and starred, the best
    member's row marked with a dagger."""
    board = leaderboard(results)
    table = Table(
        title=terminal_text(board.title),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    shown = [k for k, column in enumerate(board.header) if column not in PAGE_ONLY]
    for k in shown:
        column = board.header[k]
        text = SHORT.get(column, column.replace("accuracy", "acc"))
        if k in (1, 2):  # the candidate and its family: wrapped when long
            table.add_column(text, min_width=(16, 8)[k - 1])
        else:
            table.add_column(text, justify="right", no_wrap=True)
    for row in board.rows:
        cells = list(row["cells"])
        cells[1] += {"chosen": " *", "best-member": " †"}.get(row["mark"], "")
        # names come from files: shown as the characters they hold, never as markup
        table.add_row(*(terminal_text(cells[k]) for k in shown), style="bold" if row["mark"] == "chosen" else None)
    return table


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
            f" (test {label.removesuffix(' %')}: {number(chosen.test.get(primary), scale, spec)}{unit} against "
            f"{number(best.test.get(primary), scale, spec)}{unit})"
        )
    p = f"p = {p_value_text(verdict.p_value)}" if verdict.p_value is not None else "no p-value recorded"
    if verdict.chosen == verdict.best_member:
        return (
            f"The chosen model is the {verdict.baseline}, {verdict.chosen}: no {verdict.subject} beat it on "
            f"validation{scores}."
        )
    if verdict.significant is None:
        outcome = "was not tested against"
    elif not verdict.significant:
        outcome = "is not significantly better than"
    else:
        better = chosen is None or best is None or _beats(chosen, best, primary)
        outcome = "is significantly better than" if better else "is significantly worse than"
    return (
        f"The chosen {verdict.subject}, {verdict.chosen}, {outcome} the {verdict.baseline}, {verdict.best_member}"
        f"{scores}: {verdict.test}, {p}, at significance level {SIGNIFICANCE_LEVEL}."
    )


def _beats(a: Candidate, b: Candidate, metric: str) -> bool:
    x, y = a.test.get(metric), b.test.get(metric)
    if x is None or y is None:
        return True
    return x > y if metric != "rmse" else x < y


def diversity_summary(results: Results) -> str:
    """One line on how differently the members err: the room a fusion has to improve on them ("" without
    diversity in the results)."""
    d = results.diversity
    if d is None:
        return ""
    facts = (
        ("oracle accuracy", d.oracle_accuracy, ".1%"),
        ("mean pairwise disagreement", d.mean_disagreement, ".3f"),
        ("mean error correlation", d.mean_error_correlation, ".3f"),
    )
    return ", ".join(f"{label} {format(value, spec)}" for label, value, spec in facts if finite(value))


def print_leaderboard(results: Results | Mapping, console: Console | None = None, **old) -> None:
    """Print the leaderboard of `results`, the members' diversity, the notes on how the numbers were made and
    the verdict: the chosen candidate (chosen on validation; the table's top row is ranked on test when not
    every candidate has a validation score) against the best member."""
    if not isinstance(results, Results | Mapping) and hasattr(results, "to_results"):  # an evaluate Report
        deprecated("print_leaderboard(report)", "print_leaderboard(report.to_results())")
        results = results.to_results()
        old.pop("chosen", None)
    if old:
        raise ArgumentError(f"print_leaderboard() got unexpected keyword arguments {sorted(old)}")
    results = results if isinstance(results, Results) else parse_results(results)
    console = console or terminal_console()
    console.print(leaderboard_table(results))
    verdict = verdict_text(results) if results.verdict is not None else ""
    for line in (diversity_summary(results), *results.notes, verdict):
        if line:
            console.print(line, highlight=False, markup=False)
