"""Text from files and arguments on the terminal: shown as the characters it holds, never obeyed.

A member, class or split name, a path or a library's message may hold rich markup (`[/]`, `[link=...]`),
which rich would parse (and raise on), or control characters (ESC sequences that clear the screen or set the
window title, a carriage return that overwrites a line, bidirectional overrides that reorder what is shown),
which the terminal would obey. Three tools, one rule:

- `escape_controls(text)`: every control or invisible formatting character shown as its escape (`\\x1b`);
- `terminal_text(text)`: a rich `Text` of it, for tables and other renderables (never parsed as markup);
- `terminal_console()`: the consoles modelfusion prints with: they parse no markup and no emoji codes, and
  pass every string through `escape_controls` (keeping our own newlines and tabs).
"""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = ["escape_controls", "terminal_text", "terminal_console"]

# Control (Cc), format (Cf: bidirectional overrides, zero-width characters), line and paragraph separators
# and lone surrogates: characters that act on the terminal or hide, rather than show.
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}
_ASCII_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(32), 127]}
_ASCII_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def _escape(character: str) -> str:
    code = ord(character)
    if code < 256:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: object, keep: str = "") -> str:
    """`text` (any value, as `str`) with every control and invisible formatting character shown as its
    escape (`\\n`, `\\x1b`, `\\u202e`), except those in `keep`; printable characters are left as they are."""
    text = str(text)
    if text.isascii():
        table = {code: shown for code, shown in _ASCII_CONTROLS.items() if chr(code) not in keep}
        return text.translate(table)
    return "".join(
        _ASCII_CONTROLS.get(ord(c), _escape(c))
        if c not in keep and unicodedata.category(c) in _HIDDEN_CATEGORIES
        else c
        for c in text
    )


def terminal_text(text: object, style: str = "") -> Text:
    """`text` as a rich `Text` (shown as is: no markup, no emoji codes), its control characters escaped."""
    return Text(escape_controls(text), style=style)


class _TerminalConsole(Console):
    """A rich console that shows every string as the characters it holds (see the module's docstring)."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(escape_controls(text, keep="\n\t"), **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()  # a stream the shell closed (`>&-`) is None
    except (ValueError, OSError):  # closed, or not a real file
        return False


def terminal_console(*, stderr: bool = False, piped_width: int | None = None, **options: Any) -> Console:
    """A console for modelfusion's output (stdout, or stderr with `stderr=True`), safe for any text.

    `piped_width`: the width to lay out tables in when the stream is not a terminal (rich's default, 80
    columns, wraps a leaderboard). A closed stream is fine: what would be printed is dropped.
    """
    if piped_width is not None and not _is_terminal(sys.stderr if stderr else sys.stdout):
        options.setdefault("width", piped_width)
    return _TerminalConsole(stderr=stderr, markup=False, emoji=False, **options)
