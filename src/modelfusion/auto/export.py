"""The natural form of an output fusion whose members are not all torch networks: a folder of the members'
files (`members/STEM.safetensors` or `.skops`, STEM the member's name made a safe file stem) and the fitted
combiner (`combiner.safetensors`, which names its members in order). Torch-only fusions are `EnsembleModule`
folders instead."""

from __future__ import annotations

import os
from pathlib import Path

from .._files import unique_stems
from ..ensemble import Combiner, load_combiner, save_combiner
from ..errors import CheckpointError
from ..io import load_member, save_member
from ..members import Member

__all__ = ["save_fusion", "load_fusion"]


def save_fusion(members: list[Member], combiner: Combiner, path: str | os.PathLike) -> Path:
    """Write the members and the combiner into the new folder `path` (which must not exist)."""
    path = Path(path)
    path.mkdir(parents=True)
    for member, stem in zip(members, unique_stems([m.name for m in members]), strict=True):
        save_member(member, path / "members" / stem)  # the name is data: its file gets a safe stem
    save_combiner(combiner, path / "combiner.safetensors")
    return path


def load_fusion(path: str | os.PathLike) -> tuple[list[Member], Combiner]:
    """The members (in the combiner's order) and the fitted combiner of a folder written by `save_fusion`;
    fuse with `combiner.predict_proba(collect_predictions(members, X))`."""
    path = Path(path)
    combiner = load_combiner(path / "combiner.safetensors")
    members = []
    for name, stem in zip(combiner.member_names_, unique_stems(combiner.member_names_), strict=True):
        files = sorted((path / "members").glob(f"{stem}.*"))
        if len(files) != 1:
            raise CheckpointError(f"{path}/members holds {len(files)} files for member {name!r}; expected one")
        members.append(load_member(files[0], name=name))
    return members, combiner
