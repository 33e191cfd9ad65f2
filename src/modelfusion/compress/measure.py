"""Measuring a (compressed) classifier: size, accuracy and NLL with intervals, CPU latency."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["measure"]


def measure(model: nn.Module, split, *, runs: int = 20, seed: int = 0) -> dict:
    """What a (compressed) classifier costs and scores on `split`: parameters, accuracy and NLL with 95%
    bootstrap intervals over the split's samples (`seed`), and the median CPU latency of `runs` warm forward
    passes at batch 1 and batch 256 (on the threads torch has), all in eval mode; the model's modes are left as
    found. `correct` lists which samples it got right (for McNemar tests)."""
    import statistics
    import time

    from .._modules import evaluating, output_width
    from ..evaluate.metrics import per_sample_classification
    from ..evaluate.stats import bootstrap_counts, bootstrap_means, percentile_interval

    output_width(model, split.X, "the model")  # inputs of another dataset fail here, in one line

    def latency(X: torch.Tensor) -> float:
        for _ in range(3):
            model(X)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            model(X)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    with evaluating(model), torch.no_grad():
        proba = torch.softmax(model(split.X).float(), dim=1).numpy()
        batch_1, batch_256 = latency(split.X[:1]), latency(split.X[:256])
    per_sample = per_sample_classification(proba, split.y.numpy())
    counts = bootstrap_counts(len(proba), seed=seed)
    scores = {}
    for metric in ("accuracy", "nll"):
        low, high = percentile_interval(bootstrap_means(per_sample[metric], counts))
        scores[metric], scores[f"{metric}_ci"] = float(per_sample[metric].mean()), [float(low), float(high)]
    return {
        # values stored: weights and biases, and for quantized models their integers and scales
        "parameters": getattr(model, "stored_values", None) or sum(t.numel() for t in model.state_dict().values()),
        **scores,
        "latency_batch_1_us": batch_1,
        "latency_batch_256_us": batch_256,
        "threads": torch.get_num_threads(),
        "correct": per_sample["accuracy"].astype(bool).tolist(),
    }
