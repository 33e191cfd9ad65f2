"""The natural form of an output fusion whose members are not all torch networks: a folder of the members'
files (`members/NAME.safetensors` or `.skops`) and the fitted combiner (`combiner.safetensors`, which names its
members in order). Torch-only fusions are `EnsembleModule` folders instead."""

from __future__ import annotations

import os
from pathlib import Path

from ..ensemble import Combiner, load_combiner, save_combiner
from ..ensemble.module import safe_file_name
from ..errors import CheckpointError
from ..io import load_member, save_member
from ..members import Member

__all__ = ["save_fusion", "load_fusion"]


def save_fusion(members: list[Member], combiner: Combiner, path: str | os.PathLike) -> Path:
    """Write the members and the combiner into the new folder `path` (which must not exist)."""
    path = Path(path)
    unsafe = [m.name for m in members if not safe_file_name(m.name)]
    if unsafe:
        raise CheckpointError(f"member names {unsafe} cannot be file names; rename the members")
    path.mkdir(parents=True)
    for member in members:
        save_member(member, path / "members" / member.name)
    save_combiner(combiner, path / "combiner.safetensors")
    return path


def load_fusion(path: str | os.PathLike) -> tuple[list[Member], Combiner]:
    """The members (in the combiner's order) and the fitted combiner of a folder written by `save_fusion`;
    fuse with `combiner.predict_proba(collect_predictions(members, X))`."""
    path = Path(path)
    combiner = load_combiner(path / "combiner.safetensors")
    members = []
    for name in combiner.member_names_:
        if not safe_file_name(name):
            raise CheckpointError(f"{path}: the combiner names member {name!r}, which cannot be a file name; refused")
        files = sorted((path / "members").glob(f"{name}.*"))
        if len(files) != 1:
            raise CheckpointError(f"{path}/members holds {len(files)} files for member {name!r}; expected one")
        members.append(load_member(files[0], name=name))
    return members, combiner
