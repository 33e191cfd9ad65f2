"""The leaderboard: members and fusions ranked on one split, with intervals and tests against the best member."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from .._terminal import terminal_console, terminal_text

if TYPE_CHECKING:  # evaluate imports torch; the report reads results without it
    from ..evaluate import Report

__all__ = ["leaderboard_table", "print_leaderboard", "diversity_summary"]


def leaderboard_table(report: Report) -> Table:
    """A rich table of `report`, best first."""
    pct = f"{report.confidence:.0%}"
    title = terminal_text(f"Leaderboard: {report.split} split, {report.num_samples} samples")
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("model")
    table.add_column("kind")
    if report.task == "classification":
        columns = [
            (f"accuracy [{pct} CI]", "accuracy", 100, ".1f"),
            ("NLL", "nll", 1, ".3f"),
            ("ECE", "ece", 1, ".3f"),
        ]
        test = "McNemar p vs best"
    else:
        columns = [(f"RMSE [{pct} CI]", "rmse", 1, ".2f"), ("MAE", "mae", 1, ".2f"), ("R2", "r2", 1, ".3f")]
        test = "bootstrap p vs best"
    for header, *_ in columns:
        table.add_column(header, justify="right")
    table.add_column(test, justify="right")
    for rank, row in enumerate(report.ranked(), start=1):
        cells = []
        for i, (_, key, scale, fmt) in enumerate(columns):
            value = format(row.metrics[key] * scale, fmt)
            if i == 0 and key in row.ci:
                low, high = (format(b * scale, fmt) for b in row.ci[key])
                value = f"{value} [{low}, {high}]"
            cells.append(value)
        if row.vs_best_member is not None:
            p = row.vs_best_member["p_value"]
            versus = f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"
        else:
            versus = "(best member)" if row.name == report.best_member else ""
        table.add_row(str(rank), terminal_text(row.name), terminal_text(row.kind), *cells, versus)
    return table


def diversity_summary(report: Report) -> str:
    """One line on how differently the members err: the room a fusion has to improve on them."""
    d = report.diversity
    correlation = f"mean error correlation {d['mean_error_correlation']:.3f}"
    if report.task != "classification":
        return correlation
    return (
        f"oracle accuracy {d['oracle_accuracy']:.1%}, mean pairwise disagreement {d['mean_disagreement']:.3f}, "
        + correlation
    )


def print_leaderboard(report: Report, console: Console | None = None, *, chosen: str | None = None) -> None:
    """Print the leaderboard table, the diversity line and, given `chosen` (`Choice.reason()`), which fusion
    was chosen on validation: the one to deploy, rather than the table's top row, which is ranked on test."""
    console = console or terminal_console()
    console.print(leaderboard_table(report))
    console.print(terminal_text(diversity_summary(report)))
    if chosen is not None:
        console.print(terminal_text(f"chosen on validation: {chosen}"))
