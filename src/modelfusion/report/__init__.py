"""Presenting results: the leaderboard table in the terminal, and one self-contained HTML report.

Importing this package imports neither torch nor matplotlib: the report reads results.json and plots lazily.
"""

from .html import check_report_extra, render_report, write_report
from .leaderboard import diversity_summary, leaderboard_table, print_leaderboard
from .results import Results, load_results, parse_results

__all__ = [
    "leaderboard_table",
    "print_leaderboard",
    "diversity_summary",
    "write_report",
    "render_report",
    "check_report_extra",
    "Results",
    "load_results",
    "parse_results",
]
