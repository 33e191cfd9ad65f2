"""Presenting results: the leaderboard table in the terminal, and one self-contained HTML report, both from the
one results schema every workflow writes (`modelfusion.results`).

Importing this package imports neither torch nor matplotlib: the report reads results.json and plots lazily.
"""

from ..results import Results, load_results, parse_results
from .html import check_report_extra, render_report, write_report
from .leaderboard import Leaderboard, diversity_summary, leaderboard, leaderboard_table, print_leaderboard, verdict_text

__all__ = [
    "leaderboard",
    "Leaderboard",
    "leaderboard_table",
    "print_leaderboard",
    "diversity_summary",
    "verdict_text",
    "write_report",
    "render_report",
    "check_report_extra",
    "Results",
    "load_results",
    "parse_results",
]
