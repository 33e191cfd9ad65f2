"""Alignment of saved checkpoints: load members, align them to the first, save the aligned copies."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .._atomic import check_output
from ..errors import InvalidInputError
from ..io import load_member, save_member
from ..members import TorchMember
from .api import AlignResult, align

__all__ = ["align_checkpoints"]


def align_checkpoints(
    paths: Sequence[str | os.PathLike],
    out_paths: Sequence[str | os.PathLike | None],
    X: torch.Tensor,
    *,
    method: str = "weight_matching",
    target: str = "reference",
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[list[Path], AlignResult]:
    """Align saved torch members (files `save_member` wrote, with their factory) to the first one and save
    each aligned copy (same name and factory) at its out path (None: not saved), atomically.

    `X` is the batch the spec is derived from (and activations are computed on). Out paths are `.safetensors`
    files; an existing one is replaced only with `overwrite`, and an input never.

    Returns:
        The paths written and the `AlignResult`.
    """
    if len(out_paths) != len(paths):
        raise InvalidInputError(f"got {len(out_paths)} output paths for {len(paths)} checkpoints")
    for out in out_paths:
        if out is None:
            continue
        if Path(out).suffix != ".safetensors":
            raise InvalidInputError(f"{out}: aligned models are saved as safetensors; name it with .safetensors")
        check_output(out, kind="file", overwrite=overwrite, inputs=paths)
    members = [load_member(path) for path in paths]
    strangers = [str(p) for p, m in zip(paths, members, strict=True) if not isinstance(m, TorchMember)]
    if strangers:
        raise InvalidInputError(f"only torch models have units to align; not {strangers}")
    result = align([m.module for m in members], method=method, X=X, target=target, seed=seed)
    written = []
    for out, member, model in zip(out_paths, members, result.models, strict=True):
        if out is None:
            continue
        aligned = TorchMember(
            model,
            name=member.name,
            task=member.task,
            classes=member.classes,
            factory=member.factory,
            factory_kwargs=member.factory_kwargs,
        )
        written.append(save_member(aligned, Path(out), overwrite=overwrite))
    return written, result
