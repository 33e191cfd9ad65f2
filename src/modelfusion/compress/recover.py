"""Recovery after pruning: the uncompressed model distilled into the pruned one for a few epochs."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ..errors import ConfigError
from .methods import COMPRESSORS
from .prune import prunable_weights

__all__ = ["recover"]


def recover(
    compressed,
    teacher: nn.Module,
    train,
    val,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
):
    """A pruned model (a `Compressed` of a method that keeps float weights: `prune`, `prune-wanda`,
    `prune-structured`) trained for `epochs` to match `teacher` (the uncompressed model; Hinton
    distillation, the epoch chosen on `val`'s NLL). Weights pruning set to zero stay zero. Quantized models are
    refused: prune, recover, then quantize. Returns a new `Compressed`; the argument is not changed."""
    from ..distill import ModelTeacher, distill

    if COMPRESSORS[compressed.method].changes_structure:
        raise ConfigError(
            f"recovery retrains float weights; {compressed.method!r} quantizes them: recover a pruned model, "
            "then quantize it"
        )
    if epochs < 1:
        raise ConfigError(f"recover epochs must be at least 1, got {epochs}")
    student = copy.deepcopy(compressed.model)
    masks = {name: weight != 0 for name, weight in prunable_weights(student).items()}
    handles = [
        weight.register_hook(lambda grad, mask=masks[name]: grad * mask)
        for name, weight in prunable_weights(student).items()
        if not bool(masks[name].all())
    ]
    try:
        student = distill(
            student, ModelTeacher(teacher), train, val, epochs=epochs, lr=lr, seed=seed, progress=progress
        ).student
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():  # AdamW's decay of a zero is zero, but say so in the weights rather than trust it
        for name, weight in prunable_weights(student).items():
            weight.mul_(masks[name])
    return dataclasses.replace(compressed, model=student.eval(), recover_epochs=epochs)
