"""One progress bar for every long job: on stderr, and only when stderr is a terminal (logs stay clean)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeElapsedColumn
from rich.text import Text

from ._terminal import terminal_console, terminal_text

__all__ = ["progress_bar"]


class _Description(ProgressColumn):
    """The task's description as the characters it holds (it may name a split or a file)."""

    def render(self, task) -> Text:
        return terminal_text(task.description)


def progress_bar(enabled: bool = True) -> Progress:
    """A transient rich progress bar (description, bar, done/total, elapsed time)."""
    console = terminal_console(stderr=True)
    return Progress(
        _Description(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )
