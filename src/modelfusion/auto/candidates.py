"""What a candidate of `auto` costs (`modelfusion.results.Cost`), measured alike for every candidate: a
candidate is a `modelfusion.results.Candidate`, the one type the results are written and read with."""

from __future__ import annotations

import torch
from torch import nn

from ..compress.measure import dense_bytes
from ..evaluate.timing import median_latency_us
from ..members import Member, TorchMember
from ..results import Candidate, Cost

__all__ = ["Candidate", "Cost", "model_cost", "member_cost"]


def model_cost(model: nn.Module, X: torch.Tensor, *, stored_bytes: int | None = None, forward_passes: int = 1) -> Cost:
    """Parameters, bytes stored, batch-1 latency on the CPU and forward passes per sample of a torch model."""
    state = model.state_dict().values()
    with torch.no_grad():
        latency = median_latency_us(lambda: model(X[:1]))
    return Cost(
        parameters=sum(t.numel() for t in state),
        bytes=stored_bytes if stored_bytes is not None else dense_bytes(model),
        latency_batch_1_us=latency,
        forward_passes=forward_passes,
    )


def member_cost(member: Member, X: torch.Tensor) -> Cost:
    """`model_cost` of a torch member; for a scikit-learn member, its batch-1 latency (its size in parameters is
    not comparable, and its bytes are those of its skops file)."""
    if isinstance(member, TorchMember):
        return model_cost(member.module.eval(), X)
    import skops.io as sio

    return Cost(
        parameters=None,
        bytes=len(sio.dumps(member.estimator)),
        latency_batch_1_us=median_latency_us(lambda: member.predict(X[:1])),
        forward_passes=1,
    )
