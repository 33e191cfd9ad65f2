"""Presenting results: the leaderboard table (HTML reports come later)."""

from .leaderboard import diversity_summary, leaderboard_table, print_leaderboard

__all__ = ["leaderboard_table", "print_leaderboard", "diversity_summary"]
