"""How a distillation trains (`DistillOptions`): one config object that `distill` takes whole, that
`DistillJob` (the command line's options, the torchrun entry point's) extends, and that a checkpoint's
settings are compared against. Importing it imports no torch: the command line shows its help without it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import parse_json_object

__all__ = ["DistillOptions", "option"]


def option(help: str, default=None, **cli) -> field:
    """A field with its command-line help (`cli`: the option's type and parser where they differ)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True, kw_only=True)
class DistillOptions:
    """How `distill` trains the student.

    Attributes:
        loss: "hinton" or "mse" (`LOSSES`), with `loss_params` (e.g. temperature, alpha).
        epochs, lr, weight_decay, batch_size: AdamW with a cosine schedule over all steps; under torchrun the
            global batch is split over the processes.
        mixup: Beta(mixup, mixup) mixing of each batch with a shuffled copy of itself, labelled by the (live)
            teacher; 0 turns it off.
        feature_weight: weight of the FitNets hint losses in the total.
        patience: stop after this many epochs without a better validation NLL (None: run every epoch).
        time_limit_s: stop after the epoch during which this many seconds have passed (None: no limit); as with
            patience, the student of the best validation epoch is kept.
        seed: the same seed gives the same student, byte for byte.
        checkpoint_dir, resume, overwrite: a resumable checkpoint written each epoch, continued with `resume`,
            replaced by a fresh run only with `overwrite`.
        progress: show a progress bar.
    """

    loss: str = option("distillation loss: hinton or mse (modelfusion.distill.LOSSES)", "hinton")
    loss_params: dict | None = option(
        "JSON object of the loss's parameters, e.g. '{\"temperature\": 4}'", cli=str | None, parse=parse_json_object
    )
    epochs: int = option("training epochs", 40)
    lr: float = option("AdamW learning rate", 1e-3)
    weight_decay: float = option("AdamW weight decay", 1e-4)
    batch_size: int = option("global batch size (split over torchrun's processes)", 64)
    mixup: float = option("Beta(m, m) mixup of transfer inputs; 0 turns it off", 0.0)
    feature_weight: float = option("weight of the hint loss in the total", 1.0)
    patience: int | None = option("stop after this many epochs without a better validation NLL")
    time_limit_s: float | None = option("stop after the epoch during which this many seconds have passed")
    seed: int = option("seed of the split and of training", 0)
    checkpoint_dir: Path | None = option("write a resumable checkpoint here each epoch")
    resume: bool = option("continue from the checkpoint in --checkpoint-dir", False)
    overwrite: bool = option("replace an existing output (never an input of the run)", False)
    progress: bool = option("show a progress bar", True)

    def updated(self, **changes) -> DistillOptions:
        """A copy with `changes` (option name -> value); an unknown name is a `TypeError` that lists them."""
        known = {f.name for f in dataclasses.fields(DistillOptions)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown distillation options {unknown}; options are {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def training_options(self) -> DistillOptions:
        """Only the training options (a `DistillJob` is also one, with more fields)."""
        return DistillOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DistillOptions)})
