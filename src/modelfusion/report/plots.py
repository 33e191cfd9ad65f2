"""Shared plotting plumbing: matplotlib as an optional extra, figures written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from .._atomic import atomic_path
from ..errors import MissingExtraError

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or a clear error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("plotting needs matplotlib: pip install 'modelfusion[report]'") from None
    return plt


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Save `figure` (format from the suffix, PNG by default) atomically and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)
    return path
