"""Ensemble diagnostics: how often members are right together, and how alike their errors are."""

from __future__ import annotations

import numpy as np

from ..tasks import Task

__all__ = [
    "oracle_accuracy",
    "disagreement_matrix",
    "error_correlation_matrix",
    "mean_off_diagonal",
    "diversity",
]


def oracle_accuracy(member_proba: np.ndarray, y: np.ndarray) -> float:
    """Share of samples that at least one member classifies correctly: an upper bound for any selector."""
    correct = member_proba.argmax(axis=2) == y[None, :]  # [K, N]
    return float(correct.any(axis=0).mean())


def disagreement_matrix(member_proba: np.ndarray) -> np.ndarray:
    """`[K, K]`: share of samples on which members i and j predict different classes."""
    pred = member_proba.argmax(axis=2)  # [K, N]
    return (pred[:, None, :] != pred[None, :, :]).mean(axis=2)


def error_correlation_matrix(errors: np.ndarray) -> np.ndarray:
    """`[K, K]` Pearson correlation of per-sample errors (0/1 mistakes, or regression residuals).

    A member with constant errors (never wrong) has no defined correlation: its entries are NaN.
    """
    errors = np.asarray(errors, dtype=np.float64)
    centered = errors - errors.mean(axis=1, keepdims=True)
    norms = np.sqrt((centered**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (centered @ centered.T) / np.outer(norms, norms)


def mean_off_diagonal(matrix: np.ndarray) -> float:
    """Mean over pairs i < j, ignoring NaN; NaN when there is no pair."""
    rows, cols = np.triu_indices(matrix.shape[0], k=1)
    values = matrix[rows, cols]
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def diversity(outputs: np.ndarray, y: np.ndarray, task: Task) -> dict:
    """Oracle accuracy, mean pairwise disagreement and error correlation of K members.

    Args:
        outputs: member probabilities `[K, N, C]` (classification) or values `[K, N]` (regression).
        y: labels or targets `[N]`.
    """
    if task == "classification":
        errors = (outputs.argmax(axis=2) != y[None, :]).astype(np.float64)
        disagreement = disagreement_matrix(outputs)
        correlation = error_correlation_matrix(errors)
        return {
            "oracle_accuracy": oracle_accuracy(outputs, y),
            "mean_disagreement": mean_off_diagonal(disagreement),
            "mean_error_correlation": mean_off_diagonal(correlation),
            "disagreement": disagreement.tolist(),
            "error_correlation": np.where(np.isnan(correlation), None, correlation).tolist(),
        }
    correlation = error_correlation_matrix(outputs - y[None, :])
    return {
        "mean_error_correlation": mean_off_diagonal(correlation),
        "error_correlation": np.where(np.isnan(correlation), None, correlation).tolist(),
    }
