"""The natural form of an output fusion whose members are not all torch networks: a folder of the members'
files (`members/STEM.safetensors` or `.skops`, STEM the member's name made a safe file stem) and the fitted
combiner (`combiner.safetensors`, which names its members in order). Torch-only fusions are `EnsembleModule`
folders instead (`EnsembleModule.save`). `load_fusion_member` reads either folder back as one member, so
that it predicts, is evaluated or is fused again like any other."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._checks import PathArg, checked
from .._files import unique_stems
from ..errors import CheckpointError
from ..io import load_member, save_member
from ..members import Member, TorchMember
from ..predictions import Predictions
from .base import Combiner
from .module import MANIFEST_FILE, EnsembleModule
from .serialize import load_combiner, save_combiner

__all__ = ["save_fusion", "load_fusion", "is_fusion_folder", "load_fusion_member", "FusionMember"]

COMBINER_FILE = "combiner.safetensors"


@checked
def save_fusion(members: list[Member], combiner: Combiner, path: PathArg) -> Path:
    """Write the members and the combiner into the new folder `path` (which must not exist)."""
    path = Path(path)
    path.mkdir(parents=True)
    for member, stem in zip(members, unique_stems([m.name for m in members]), strict=True):
        save_member(member, path / "members" / stem)  # the name is data: its file gets a safe stem
    save_combiner(combiner, path / COMBINER_FILE)
    return path


@checked
def load_fusion(path: PathArg) -> tuple[list[Member], Combiner]:
    """The members (in the combiner's order) and the fitted combiner of a folder written by `save_fusion`;
    fuse with `combiner.predict_proba(collect_predictions(members, X))`."""
    path = Path(path)
    combiner = load_combiner(path / COMBINER_FILE)
    members = []
    for name, stem in zip(combiner.member_names_, unique_stems(combiner.member_names_), strict=True):
        files = sorted((path / "members").glob(f"{stem}.*"))
        if len(files) != 1:
            raise CheckpointError(f"{path}/members holds {len(files)} files for member {name!r}; expected one")
        members.append(load_member(files[0], name=name))
    return members, combiner


def is_fusion_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `save_fusion` or `EnsembleModule.save` (what `auto` exports when
    it chooses an output fusion)."""
    path = Path(path)
    return path.is_dir() and ((path / COMBINER_FILE).is_file() or (path / MANIFEST_FILE).is_file())


class FusionMember:
    """An output fusion (its members and their fitted combiner) as one member: its outputs are the log of the
    combiner's probabilities (classification; softmax gives them back exactly) or its values (regression)."""

    # as SklearnMember: a class the combiner gives probability 0 keeps a finite logit, log(1e-12) ~ -27.6
    _MIN_PROBA = 1e-12

    def __init__(self, members: list[Member], combiner: Combiner, *, name: str) -> None:
        self.members, self.combiner, self.name = members, combiner, name
        self.task = combiner.task_
        self.classes = tuple(combiner.classes_) if self.task == "classification" else None
        self.num_outputs = len(self.classes) if self.classes is not None else 1
        self.takes_text = any(getattr(m, "takes_text", False) for m in members)

    def predict(self, X) -> torch.Tensor:
        # each member runs on all of X here: under torchrun, collect_predictions has already split the samples
        outputs = torch.stack([member.predict(X).float() for member in self.members])
        preds = Predictions(
            outputs=outputs,
            labels=None,
            member_names=self.combiner.member_names_,
            task=self.task,
            split="fusion",
            classes=self.classes,
        )
        features = X if self.combiner.uses_features else None
        if self.task == "regression":
            return self.combiner.predict(preds, X=features).float()
        return self.combiner.predict_proba(preds, X=features).double().clamp_min(self._MIN_PROBA).log().float()

    def __repr__(self) -> str:
        return f"FusionMember({self.name!r}, {self.combiner.name}, {len(self.members)} members)"


@checked
def load_fusion_member(path: PathArg, *, name: str | None = None) -> Member:
    """The output fusion saved in the folder `path` (by `save_fusion` or `EnsembleModule.save`: what `auto`
    exports when it chooses one) as one member, named `name` or after the folder."""
    name = name or Path(path).name
    if (Path(path) / MANIFEST_FILE).is_file():
        module = EnsembleModule.load(path)  # its output is already the log of the fused probabilities
        classes = module.combiner.classes_ if module.task == "classification" else None
        return TorchMember(module, name=name, task=module.task, classes=classes)
    members, combiner = load_fusion(path)
    return FusionMember(members, combiner, name=name)
