"""Measuring a (compressed) classifier: size, accuracy and NLL with intervals, CPU latency."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["measure", "dense_bytes"]


def dense_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers stored as they are (dense, in their own dtypes)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def measure(model: nn.Module, split, *, runs: int = 20, seed: int = 0) -> dict:
    """What a (compressed) classifier costs and scores on `split`: parameters, accuracy and NLL with 95%
    bootstrap intervals over the split's samples (`seed`), and the median CPU latency of `runs` warm forward
    passes at batch 1 and batch 256 (on the threads torch has), all in eval mode; the model's modes are left as
    found. `correct` lists which samples it got right (for McNemar tests)."""
    from .._modules import evaluating, output_width
    from ..evaluate.stats import scores_with_intervals
    from ..evaluate.timing import median_latency_us

    output_width(model, split.X, "the model")  # inputs of another dataset fail here, in one line

    def latency(X: torch.Tensor) -> float:
        return median_latency_us(lambda: model(X), runs=runs)

    with evaluating(model), torch.no_grad():
        proba = torch.softmax(model(split.X).float(), dim=1).numpy()
        batch_1, batch_256 = latency(split.X[:1]), latency(split.X[:256])
    scores = scores_with_intervals(proba, split.y.numpy(), seed=seed)
    return {
        # values stored: weights and biases, and for quantized models their integers and scales
        "parameters": getattr(model, "stored_values", None) or sum(t.numel() for t in model.state_dict().values()),
        **{k: scores[k] for k in ("accuracy", "nll", "accuracy_ci", "nll_ci")},
        "latency_batch_1_us": batch_1,
        "latency_batch_256_us": batch_256,
        "threads": torch.get_num_threads(),
        "correct": (proba.argmax(1) == split.y.numpy()).tolist(),
    }
