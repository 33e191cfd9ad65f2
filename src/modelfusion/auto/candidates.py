"""A candidate of `auto`: something deployable, its probabilities on validation and test, what it costs, and how
to export it; and the scoring every candidate gets alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..compress.measure import dense_bytes
from ..evaluate.timing import median_latency_us
from ..members import Member, TorchMember

__all__ = ["Candidate", "model_cost", "member_cost"]


@dataclass
class Candidate:
    """One entry of the leaderboard.

    `val` holds validation scores: the candidate's own predictions for what was not fitted on validation, or
    cross-validated scores (output combiners, whose weights validation fitted). `val_proba` / `test_proba` are
    `[N, C]` probabilities; `export(path)` writes the candidate in its natural form and returns where;
    `network` is the candidate as one torch member, when it is one network (what compression starts from)."""

    name: str
    family: str
    val_proba: np.ndarray
    test_proba: np.ndarray
    cost: dict[str, float | None]
    export: Callable[[Path], Path] | None = None
    val: dict[str, float] = field(default_factory=dict)
    description: str = ""
    network: TorchMember | None = None


def model_cost(model: nn.Module, X: torch.Tensor, *, stored_bytes: int | None = None, forward_passes: int = 1) -> dict:
    """Parameters, bytes stored, batch-1 latency on the CPU and forward passes per sample of a torch model."""
    state = model.state_dict().values()
    with torch.no_grad():
        latency = median_latency_us(lambda: model(X[:1]))
    return {
        "parameters": sum(t.numel() for t in state),
        "bytes": stored_bytes if stored_bytes is not None else dense_bytes(model),
        "latency_batch_1_us": latency,
        "forward_passes": forward_passes,
    }


def member_cost(member: Member, X: torch.Tensor) -> dict:
    """`model_cost` of a torch member; for a scikit-learn member, its batch-1 latency (its size in parameters is
    not comparable, and its bytes are those of its skops file)."""
    if isinstance(member, TorchMember):
        return model_cost(member.module.eval(), X)
    import skops.io as sio

    return {
        "parameters": None,
        "bytes": len(sio.dumps(member.estimator)),
        "latency_batch_1_us": median_latency_us(lambda: member.predict(X[:1])),
        "forward_passes": 1,
    }
