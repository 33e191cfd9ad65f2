"""The `align:` step of a merge config, in one place: its options and the aligned copies it merges.

Models trained apart compute similar functions with their units in different orders; `align:` permutes every
model into the reference's unit order (`modelfusion.align`) before the merge method sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["AlignOptions", "aligned_copies"]


class AlignOptions(BaseModel):
    """`align:` permute every model into the first one's (or the base's) unit order before merging
    (`modelfusion.align`); the models are saved torch members, loaded in memory."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["weight_matching", "activation_matching"] = "weight_matching"
    dataset: str = "digits"
    samples: int = 1024
    seed: int = 0
    target: Literal["reference", "average"] = "reference"


@contextmanager
def aligned_copies(
    models: list[Path], base: Path | None, options: AlignOptions, *, beside: Path
) -> Iterator[tuple[list[Path], Path | None]]:
    """Aligned copies of the models (and the base) in a working folder beside `beside` (the merge's output),
    removed on exit, and by the next run there if this one is killed; the base, else the first model, is the
    reference."""
    from .._atomic import scratch_dir
    from ..align.files import align_checkpoints
    from ..datasets import load_dataset

    inputs = ([base] if base is not None else []) + models
    X = load_dataset(options.dataset, seed=options.seed).train.X[: options.samples]
    with scratch_dir(beside) as folder:
        outs = [folder / f"{i}_{p.name}" for i, p in enumerate(inputs)]
        written, _ = align_checkpoints(inputs, outs, X, method=options.method, target=options.target, seed=options.seed)
        yield (written[1:], written[0]) if base is not None else (written, None)
