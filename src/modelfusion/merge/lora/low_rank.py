"""Best low-rank approximations: of a product of factors without forming it, and of a dense matrix (exact SVD, or
a seeded randomized one for large matrices); each with the relative Frobenius error it leaves."""

from __future__ import annotations

import math
from typing import Literal

import torch

from ...errors import ConfigError
from .adapter import LowRank

__all__ = ["truncate_product", "factorize", "SVD_KINDS"]

SVD_KINDS = ("exact", "randomized")
_OVERSAMPLING, _POWER_ITERATIONS = 10, 4


def _relative_error(total_square: float, kept_square: float) -> float:
    return math.sqrt(max(total_square - kept_square, 0.0) / total_square) if total_square > 0 else 0.0


def _split(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> LowRank:
    """`u diag(s) vh` cut to `rank`, the singular values shared evenly: left = u sqrt(s), right = sqrt(s) vh (as
    mergekit-extract-lora's default `--distribute-scale`)."""
    root = s[:rank].sqrt()
    return LowRank((u[:, :rank] * root).float().contiguous(), (root[:, None] * vh[:rank]).float().contiguous())


def truncate_product(update: LowRank, rank: int) -> tuple[LowRank, float]:
    """The best rank-`rank` approximation of `update.left @ update.right` and its relative Frobenius error, from QR
    factorizations of the two factors and an SVD of the small [r, r] core: O((rows + cols) r^2), the [rows, cols]
    product never formed."""
    if rank >= update.rank:
        return update, 0.0
    q_left, r_left = torch.linalg.qr(update.left.double())  # [m, r], [r, r]
    q_right, r_right = torch.linalg.qr(update.right.double().T)  # [n, r], [r, r]
    u, s, vh = torch.linalg.svd(r_left @ r_right.T)
    square = s.square()
    error = _relative_error(float(square.sum()), float(square[:rank].sum()))
    return _split(q_left @ u, s, vh @ q_right.T, rank), error


def factorize(
    matrix: torch.Tensor,
    rank: int,
    *,
    svd: Literal["exact", "randomized"] = "exact",
    min_singular_value: float = 0.0,
    seed: int = 0,
) -> tuple[LowRank, float]:
    """The best rank-`rank` approximation of `matrix` (fewer where singular values are at most
    `min_singular_value`) and its relative Frobenius error.

    `svd="randomized"` finds the top singular directions by a seeded randomized range finder (Halko et al., 2011;
    `rank + 10` directions, 4 power iterations): much faster on large matrices; the error is measured on the
    matrix either way.
    """
    if svd not in SVD_KINDS:
        raise ConfigError(f"unknown svd {svd!r}; valid: {', '.join(SVD_KINDS)}")
    work = matrix.float()
    total = float(work.double().square().sum())
    if svd == "exact" or rank + _OVERSAMPLING >= min(work.shape):
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
    else:
        u, s, vh = _randomized_svd(work, rank + _OVERSAMPLING, seed)
    keep = min(rank, len(s))
    if min_singular_value > 0:
        keep = min(keep, int((s > min_singular_value).sum()))
    keep = max(keep, 1)
    update = _split(u, s, vh, keep)
    # measured, not from the singular values: `total - kept` loses every digit when the update is nearly exact
    residual = float((work - update.delta()).double().square().sum())
    return update, (residual / total) ** 0.5 if total > 0 else 0.0


def _randomized_svd(matrix: torch.Tensor, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn(matrix.shape[1], width, generator=generator)
    basis, _ = torch.linalg.qr(matrix @ probe)  # [m, width]
    for _ in range(_POWER_ITERATIONS):  # sharpen toward the top singular directions
        basis, _ = torch.linalg.qr(matrix.T @ basis)
        basis, _ = torch.linalg.qr(matrix @ basis)
    u, s, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
    return basis @ u, s, vh
