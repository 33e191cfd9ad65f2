"""Point metrics for probabilities (classification) and values (regression), built on scikit-learn's."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "classification_metrics",
    "regression_metrics",
    "expected_calibration_error",
    "reliability_curve",
    "per_sample_classification",
    "per_sample_regression",
]

# log(1e-15) caps one sample's NLL at ~34.5, as scikit-learn's log_loss did for years; keeps NLL finite.
_EPS = 1e-15


def _confidence_bins(proba: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: sample count, correct count and summed top-label confidence."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    # Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 goes to the first bin.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    return (
        np.bincount(bins, minlength=n_bins),
        np.bincount(bins, correct, n_bins),
        np.bincount(bins, confidence, n_bins),
    )


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE (Guo et al., 2017): bin by confidence into `n_bins` equal-width bins, weight
    |accuracy - confidence| of each bin by its share of samples."""
    count, correct, confidence = _confidence_bins(proba, y, n_bins)
    return float(np.abs(correct - confidence).sum() / max(count.sum(), 1))


def reliability_curve(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """The reliability diagram behind the ECE: per non-empty confidence bin (the ECE's bins), the mean top-label
    confidence, the accuracy and the number of samples. A calibrated model's accuracy equals its confidence."""
    count, correct, confidence = _confidence_bins(proba, y, n_bins)
    used = count > 0
    return {
        "confidence": (confidence[used] / count[used]).tolist(),
        "accuracy": (correct[used] / count[used]).tolist(),
        "count": count[used].tolist(),
    }


def per_sample_classification(proba: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample correctness, NLL and Brier score: their means are the metrics, so they bootstrap."""
    n, num_classes = proba.shape
    onehot = np.eye(num_classes)[y]
    p_true = proba[np.arange(n), y]
    return {
        "accuracy": (proba.argmax(axis=1) == y).astype(np.float64),
        "nll": -np.log(np.clip(p_true, _EPS, None)),
        "brier": ((proba - onehot) ** 2).sum(axis=1),
    }


def classification_metrics(proba: np.ndarray, y: np.ndarray, *, n_bins: int = 15, top_k: int = 3) -> dict[str, float]:
    """Accuracy, NLL, multi-class Brier (sum over classes), ECE, macro-F1 and top-k accuracy.

    Args:
        proba: probabilities `[N, C]` (rows sum to one).
        y: integer labels `[N]` in `0..C-1`.
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y)
    num_classes = proba.shape[1]
    labels = np.arange(num_classes)
    pred = proba.argmax(axis=1)
    per_sample = per_sample_classification(proba, y)
    out = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        # Our own mean (equal to scikit-learn's log_loss, tested) so the point value and its bootstrap
        # interval come from the same per-sample losses.
        "nll": float(per_sample["nll"].mean()),
        "brier": float(per_sample["brier"].mean()),
        "ece": expected_calibration_error(proba, y, n_bins),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
    }
    if num_classes > top_k:
        out[f"top{top_k}_accuracy"] = float(skm.top_k_accuracy_score(y, proba, k=top_k, labels=labels))
    return out


def per_sample_regression(pred: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    return {"squared_error": (pred - y) ** 2, "absolute_error": np.abs(pred - y)}


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R2."""
    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)),
    }
