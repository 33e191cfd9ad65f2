"""Uncertainty and significance: vectorized bootstrap intervals, exact McNemar, paired bootstrap."""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = [
    "bootstrap_counts",
    "bootstrap_means",
    "percentile_interval",
    "mcnemar_exact",
    "paired_bootstrap_test",
    "t_interval",
]


def bootstrap_counts(n: int, *, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """How often each of `n` samples is drawn in each resample: `[n_resamples, n]` float64.

    A resample's mean of any per-sample quantity v is then `counts @ v / n`, so many quantities (and
    many members, which share these counts and so stay paired) bootstrap with one matrix product.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    offsets = (np.arange(n_resamples) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n).reshape(n_resamples, n).astype(float)


def bootstrap_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Resampled means of `values` `[n]` or `[n, M]` -> `[n_resamples]` or `[n_resamples, M]`."""
    return counts @ values / counts.shape[1]


def percentile_interval(resampled: np.ndarray, confidence: float = 0.95) -> tuple:
    """Percentile interval over the first axis."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail], axis=0)
    return low, high


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact (binomial) McNemar test of two classifiers on the same samples.

    Only the discordant pairs count: b = A right and B wrong, c = A wrong and B right. Under the null both
    are equally likely, so min(b, c) is Binomial(b + c, 1/2); the p-value is two-sided.
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"test": "mcnemar_exact", "a_only_correct": b, "b_only_correct": c, "p_value": p}


def paired_bootstrap_test(loss_a: np.ndarray, loss_b: np.ndarray, counts: np.ndarray, confidence: float = 0.95) -> dict:
    """Paired bootstrap of the mean per-sample loss difference A - B (negative: A is better).

    The p-value is two-sided, from the bootstrap distribution shifted to the null of no difference.
    """
    diff = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    observed = float(diff.mean())
    resampled = bootstrap_means(diff, counts)
    low, high = percentile_interval(resampled, confidence)
    p = float(np.mean(np.abs(resampled - observed) >= abs(observed)))
    return {
        "test": "paired_bootstrap",
        "mean_difference": observed,
        "ci": [float(low), float(high)],
        "p_value": max(p, 1.0 / len(resampled)),
    }


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of independent replicates (e.g. one figure per seed); non-finite values (a
    ratio over a zero gap) are left out, and fewer than two values give the mean twice."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    mean = float(finite.mean())
    if len(finite) < 2:
        return mean, mean
    half = stats.t.ppf((1 + confidence) / 2, len(finite) - 1) * finite.std(ddof=1) / len(finite) ** 0.5
    return mean - half, mean + half


def scores_with_intervals(proba: np.ndarray, y: np.ndarray, *, seed: int = 0, n_resamples: int = 1000) -> dict:
    """A classifier's accuracy, NLL, Brier score and ECE on `(proba [N, C], y)`, with 95% percentile bootstrap
    intervals (`<metric>_ci`) for accuracy and NLL."""
    from .metrics import classification_metrics, per_sample_classification

    metrics = classification_metrics(proba, y)
    scores = {k: float(metrics[k]) for k in ("accuracy", "nll", "brier", "ece")}
    per_sample = per_sample_classification(proba, y)
    counts = bootstrap_counts(len(y), n_resamples=n_resamples, seed=seed)
    for metric in ("accuracy", "nll"):
        low, high = percentile_interval(bootstrap_means(per_sample[metric], counts))
        scores[f"{metric}_ci"] = [float(low), float(high)]
    return scores
