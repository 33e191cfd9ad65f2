"""Bootstrap confidence intervals: modelfusion's shared-counts bootstrap against scipy.stats.bootstrap.

The issue's target: 1,000 resamples of 10,000 samples well under a second. Both compute 95% percentile
intervals of the mean of three per-sample quantities (accuracy, NLL, Brier), as `evaluate` does for one row.

    .venv/bin/python bench/bootstrap.py [--samples 10000] [--resamples 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from scipy import stats

from modelfusion.evaluate import evaluate
from modelfusion.evaluate.stats import bootstrap_counts, bootstrap_means, percentile_interval
from modelfusion.predictions import Predictions


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    values = np.stack([rng.random(args.samples) < 0.9, rng.exponential(size=args.samples), rng.random(args.samples)], 1)
    values = values.astype(np.float64)  # [N, 3]

    def ours():
        counts = bootstrap_counts(args.samples, n_resamples=args.resamples, seed=0)
        return percentile_interval(bootstrap_means(values, counts))

    def scipy_reference():
        return [
            stats.bootstrap(
                (values[:, j],),
                np.mean,
                n_resamples=args.resamples,
                method="percentile",
                vectorized=True,
                random_state=0,
            ).confidence_interval
            for j in range(values.shape[1])
        ]

    ours_s, scipy_s = best_of(ours, args.repeats), best_of(scipy_reference, args.repeats)
    low, high = ours()
    ref = scipy_reference()
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(f"{args.resamples} resamples x {args.samples} samples x 3 metrics, best of {args.repeats}")
    print(f"modelfusion  {ours_s * 1000:8.1f} ms")
    print(f"scipy        {scipy_s * 1000:8.1f} ms   (scipy / modelfusion = {scipy_s / ours_s:.1f}x)")
    for j, name in enumerate(["accuracy", "nll", "brier"]):
        print(f"  {name:<8} ours [{low[j]:.4f}, {high[j]:.4f}]  scipy [{ref[j].low:.4f}, {ref[j].high:.4f}]")

    # The whole of `evaluate`: 5 members + 1 fusion, 10 classes, every metric, CIs, McNemar, diversity.
    logits = torch.as_tensor(rng.normal(size=(5, args.samples, 10)) * 3, dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 10, args.samples))
    preds = Predictions(logits, labels, tuple(f"m{k}" for k in range(5)), "classification", "test")
    fused = {"mean": preds.probabilities().mean(0)}
    full_s = best_of(lambda: evaluate(preds, fused, n_resamples=args.resamples), args.repeats)
    print(f"evaluate(5 members + 1 fusion, {args.samples} samples, 10 classes): {full_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
