"""Shared plotting plumbing: matplotlib as an optional extra, figures written atomically or as inline SVG, and
the curves more than one part draws (interpolation between models, cascades)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._atomic import atomic_path
from .errors import MissingExtraError

__all__ = [
    "pyplot",
    "plain_text",
    "save_figure",
    "svg_markup",
    "interpolation_figure",
    "cascade_figure",
    "search_figure",
]

Curve = Sequence[Mapping[str, float]]


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or a clear error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("plotting needs matplotlib: pip install 'modelfusion[report]'") from None
    return plt


def plain_text():
    """A context in which figure text is drawn as given: a `$` in a name from a results file is a dollar
    sign, not the start of matplotlib's math markup."""
    return pyplot().rc_context({"text.parse_math": False})


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Save `figure` (format from the suffix, PNG by default) atomically and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)
    return path


def svg_markup(figure, id_prefix: str) -> str:
    """`figure` as an `<svg>` element to inline in HTML, and close it.

    Text stays text (`svg.fonttype: none`: small, selectable, drawn in the page's fonts); the XML prolog and
    the DOCTYPE (which names a URL) are dropped; no date is written, so the same figure gives the same bytes;
    `id_prefix` salts the ids matplotlib derives for clip paths, so that figures in one page never share one.
    """
    plt = pyplot()
    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": id_prefix}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def interpolation_figure(curves: Mapping[str, Curve], *, title: str = "Interpolation"):
    """Loss (when the curves have it) and accuracy against alpha, one line per curve name."""
    plt = pyplot()
    with_loss = any("loss" in row and row["loss"] is not None for rows in curves.values() for row in rows)
    figure, axes = plt.subplots(1, 2 if with_loss else 1, figsize=(9 if with_loss else 5, 3.5), squeeze=False)
    accuracy_axes = axes[0][-1]
    for name, rows in curves.items():
        alphas = [r["alpha"] for r in rows]
        if with_loss:
            losses = [math.nan if r.get("loss") is None else r["loss"] for r in rows]
            axes[0][0].plot(alphas, losses, marker=".", label=name)
        accuracy_axes.plot(alphas, [r["accuracy"] * 100 for r in rows], marker=".", label=name)
    if with_loss:
        axes[0][0].set(xlabel="alpha", ylabel="loss", title=title)
        accuracy_axes.set(xlabel="alpha", ylabel="accuracy %")
    else:
        accuracy_axes.set(xlabel="alpha", ylabel="accuracy %", title=title)
    for axis in axes[0]:
        axis.grid(alpha=0.3)
    accuracy_axes.legend()
    return figure


def cascade_figure(curves: Mapping[str, Curve], *, title: str = "Cascade"):
    """Accuracy against mean cost per sample, one line per curve name."""
    figure, axes = pyplot().subplots(figsize=(5, 3.5))
    for name, rows in curves.items():
        axes.plot([r["mean_cost"] for r in rows], [r["accuracy"] * 100 for r in rows], marker=".", label=name)
    axes.set(xlabel="mean cost per sample", ylabel="accuracy %", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def search_figure(curves: Mapping[str, Curve], *, ylabel: str, title: str = "Merge search"):
    """Each evaluation's validation value (dots) and the best so far (a line), one colour per curve name."""
    figure, axes = pyplot().subplots(figsize=(5, 3.5))
    for name, rows in curves.items():
        steps = [r["evaluation"] for r in rows]
        (line,) = axes.plot(steps, [r["best"] for r in rows], label=f"{name}: best so far")
        axes.plot(steps, [r["value"] for r in rows], ".", alpha=0.4, color=line.get_color())
    axes.set(xlabel="merges scored", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure
