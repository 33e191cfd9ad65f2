"""Sparsifying task vectors: keep the largest entries (TIES), a random share rescaled (DARE), a random share
more likely the larger an entry (DELLA), or drop the largest and the smallest (breadcrumbs); exact thresholds
in linear time, applied block by block."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ...errors import ConfigError

__all__ = ["sparsify", "task_vector_blocks"]


def _band(sample: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds that, by the sample, hold the k-th largest of n values with a margin of 1% of the ranks."""
    size = sample.numel()
    quantile = 1 - k / n  # read off the sample with kthvalue: no full sort
    low = sample.kthvalue(max(1, min(size, int(max(quantile - 0.01, 0.0) * size)))).values
    high = sample.kthvalue(max(1, min(size, int(min(quantile + 0.01, 1.0) * size) + 1))).values
    return low, high


def _in_band(parts, low, high, k: int) -> tuple[torch.Tensor, int] | None:
    """The k-th largest value and how many are larger, from the values of `parts` (flat tensors) that lie in
    [low, high] and the count above high; None when the k-th largest is outside the band."""
    above, band = 0, []
    for flat in parts:
        above += int(torch.count_nonzero(flat > high))
        band.append(flat[(flat >= low) & (flat <= high)])
    band = torch.cat(band)
    rank = k - above  # the answer's rank from the top inside the band
    if not 1 <= rank <= band.numel():
        return None
    value = band.kthvalue(band.numel() - rank + 1).values
    return value, above + int(torch.count_nonzero(band > value))


def _kth_largest(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """The k-th largest value, exactly, and how many values are strictly larger. Large tensors first narrow
    the search to a band around an estimate from a fixed sample, then select within the band: much faster
    than `kthvalue` over everything, with the same answer whatever the sample."""
    n = flat.numel()
    if n >= 1 << 20:
        sample = flat[torch.randint(0, n, (1 << 16,), generator=torch.Generator().manual_seed(0))]
        found = _in_band([flat], *_band(sample, n, k), k)
        if found is not None:
            return found
    value = flat.kthvalue(n - k + 1).values  # small, or the estimate missed: select over everything
    return value, int(torch.count_nonzero(flat > value))


class _Cut:
    """Selects the k largest entries of a tensor that is then seen block by block, in index order.

    A `kthvalue` threshold finds them in linear time (mergekit sorts every tensor); entries tied at the
    threshold are taken in index order, as a stable descending sort would. `mask` is stateful: call it on
    the blocks in order.
    """

    def __init__(self, k: int, n: int, threshold: torch.Tensor | None = None, larger: int = 0) -> None:
        self.keep_all, self.keep_none, self.taken = k >= n, k <= 0, 0
        self.threshold = threshold
        self.ties = k - larger  # entries equal to the threshold that are kept, first ones first

    @classmethod
    def of(cls, magnitude: torch.Tensor, k: int) -> _Cut:
        """The cut of a magnitude held whole."""
        flat = magnitude.reshape(-1)
        if k >= flat.numel() or k <= 0:
            return cls(k, flat.numel())
        return cls(k, flat.numel(), *_kth_largest(flat, k))

    @classmethod
    def streamed(cls, magnitudes: Callable[[], Iterator[torch.Tensor]], sample: torch.Tensor, n: int, k: int) -> _Cut:
        """The cut of a magnitude seen block by block (`magnitudes()` yields them anew), never held whole:
        one pass counts the values above a band the sample gives and keeps those inside it; the whole
        magnitude is gathered only if the sample missed."""
        if k >= n or k <= 0:
            return cls(k, n)
        found = _in_band((block.reshape(-1) for block in magnitudes()), *_band(sample, n, k), k)
        if found is None:
            found = _kth_largest(torch.cat([block.reshape(-1) for block in magnitudes()]), k)
        return cls(k, n, *found)

    def mask(self, block: torch.Tensor) -> torch.Tensor:
        if self.keep_all or self.keep_none:
            return torch.full_like(block, self.keep_all, dtype=torch.bool)
        mask = block > self.threshold
        if self.taken < self.ties:
            equal = (block.reshape(-1) == self.threshold).nonzero().flatten()[: self.ties - self.taken]
            mask.view(-1)[equal] = True
            self.taken += len(equal)
        return mask


def _selection(cut: Callable[[int], _Cut] | None, n: int, density: float, method: str, gamma: float, seed: int):
    """A stateful `block magnitude -> keep mask` for one task vector of n entries (see `sparsify`); `cut(k)`
    selects the k largest magnitudes."""
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return lambda block: torch.rand(block.shape, generator=generator, dtype=torch.float64) < density
    if method == "magnitude":
        return cut(max(1, int(density * n))).mask
    if method == "breadcrumbs":
        keep, top = int(n * density), int(n * gamma)
        bottom = n - keep - top
        if bottom < 0:
            bottom, top = 0, n - keep
        kept, dropped = cut(n - bottom), cut(top)
        return lambda block: kept.mask(block) & ~dropped.mask(block)
    raise ConfigError(f"unknown sparsification {method!r}; valid: magnitude, random, breadcrumbs, della")


def _della_blocks(
    read_delta: Callable[[slice | None], torch.Tensor],
    blocks: Sequence[slice | None],
    density: float,
    epsilon: float,
    rescale: str | None,
    seed: int,
) -> Iterator[torch.Tensor]:
    """DELLA's MAGPRUNE (Deep et al., 2024): per row, entries are kept with probabilities from density - epsilon
    (the smallest) to density + epsilon (the largest) by their magnitude's rank; "inverse_density" rescales each
    kept entry by 1 / its probability (the paper), "l1" restores the tensor's L1 norm (mergekit: a first pass
    sums it). The draws come from one generator in the tensor's order, so blocks of rows draw what the whole
    tensor would (a vector is one row: its blocks must be the whole of it)."""
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ConfigError(
            f"della: density - epsilon and density + epsilon must lie in (0, 1), got density {density}, "
            f"epsilon {epsilon}"
        )

    def kept_rows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        for rows in blocks:
            delta = read_delta(rows)
            flat = delta.reshape(1, -1) if delta.ndim < 2 else delta.reshape(delta.shape[0], -1)
            yield delta, _magprune(flat, density, epsilon, generator, inverse=rescale == "inverse_density")

    scale = 1.0
    if rescale == "l1":
        before = after = 0.0
        for delta, kept in kept_rows():
            before, after = before + float(delta.abs().sum()), after + float(kept.abs().sum())
        scale = before / after if before >= 1e-8 and after >= 1e-8 else 1.0
    for delta, kept in kept_rows():
        yield (kept * scale if scale != 1.0 else kept).reshape(delta.shape)


# Entries whose keep probabilities MAGPRUNE works out at once: its float64 and int64 temporaries (ranks, shares,
# probabilities, draws) take 8 bytes an entry each, so a block of rows is done in parts of this many entries.
MAGPRUNE_ENTRIES = 1 << 21


def _magprune(
    flat: torch.Tensor, density: float, epsilon: float, generator: torch.Generator, *, inverse: bool
) -> torch.Tensor:
    """The entries of `flat` [rows, width] that MAGPRUNE keeps (the others zero), each divided by its keep
    probability with `inverse`; rows are drawn in order, a part at a time, as one draw of the whole would."""
    kept = torch.empty_like(flat)
    width = flat.shape[1]
    step = max(1, MAGPRUNE_ENTRIES // max(width, 1))
    for start in range(0, flat.shape[0], step):
        part = flat[start : start + step]
        ranks = part.abs().argsort(dim=1).argsort(dim=1).to(torch.float64)  # 0 = the smallest in its row
        rank_share = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
        probability = (density - epsilon) + rank_share * 2 * epsilon
        keep = torch.rand(part.shape, generator=generator, dtype=torch.float64) < probability
        chosen = part * keep
        kept[start : start + step] = (chosen.double() / probability).to(part.dtype) if inverse else chosen
    return kept


def sparsify(
    delta: torch.Tensor,
    density: float,
    method: str,
    *,
    gamma: float = 0.01,
    epsilon: float = 0.15,
    rescale: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Zero out most of a task vector.

    Args:
        density: share of entries kept.
        method: "magnitude" (TIES: keep the top `density` by |delta|), "random" (DARE: keep each entry with
            probability `density`), "breadcrumbs" (drop the top `gamma` and then the smallest, so that
            `density` remain; Davari and Belilovsky, 2023), "della" (keep each entry with a probability from
            `density - epsilon` to `density + epsilon` by its magnitude's rank in its row; Deep et al., 2024).
        rescale: None, "inverse_density" (DARE's 1 / density, Yu et al., 2024) or "l1" (restore the L1 norm,
            as mergekit does).
        seed: seed of the "random" and "della" draws.
    """
    blocks = task_vector_blocks(
        lambda rows: delta, [None], density, method, gamma=gamma, epsilon=epsilon, rescale=rescale, seed=seed
    )
    return next(blocks)


def task_vector_blocks(
    read_delta: Callable[[slice | None], torch.Tensor],
    blocks: Sequence[slice | None],
    density: float,
    method: str | None,
    *,
    gamma: float = 0.01,
    epsilon: float = 0.15,
    rescale: str | None = None,
    seed: int = 0,
    numel: int | None = None,
) -> Iterator[torch.Tensor]:
    """One sparsified task vector, block by block: `read_delta(rows)` gives its rows (None: all of it);
    `numel`, the size of the whole tensor, is needed when there is more than one block.

    Selections that rank magnitudes find their thresholds first (for several blocks, by passes over the blocks
    that never hold the whole |delta|), then mask every block with them, so the result does not depend on the
    blocks.
    """
    if method is None or density >= 1:
        yield from (read_delta(rows) for rows in blocks)
        return
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    if rescale not in (None, "inverse_density", "l1"):
        raise ConfigError(f"unknown rescale {rescale!r}; valid: inverse_density, l1, or none")
    if method == "della":
        yield from _della_blocks(read_delta, blocks, density, epsilon, rescale, seed)
        return
    cut, n = None, numel
    if method != "random":
        if len(blocks) == 1:
            magnitude = read_delta(blocks[0]).abs().reshape(-1)
            n = magnitude.numel()

            def cut(k: int) -> _Cut:
                return _Cut.of(magnitude, k)
        else:  # never the whole |delta| at once: the thresholds come from passes over the blocks

            def cut(k: int) -> _Cut:
                return _Cut.streamed(lambda: (read_delta(rows).abs() for rows in blocks), sample, numel, k)

            sample = _row_sample(read_delta, blocks)
    scale = 1.0 / density if rescale == "inverse_density" else 1.0
    if rescale == "l1":
        select = _selection(cut, n, density, method, gamma, seed)
        before = after = 0.0
        for rows in blocks:
            block = read_delta(rows).abs()
            before += float(block.sum())
            after += float((block * select(block)).sum())
        scale = before / after if before >= 1e-8 and after >= 1e-8 else 1.0
    select = _selection(cut, n, density, method, gamma, seed)
    for rows in blocks:
        delta = read_delta(rows)
        kept = delta * select(delta.abs())
        yield kept * scale if scale != 1.0 else kept


def _row_sample(read_delta: Callable[[slice | None], torch.Tensor], blocks: Sequence[slice]) -> torch.Tensor:
    """|delta| of the first rows of up to 64 blocks spread over the tensor: the sample that places the band."""
    step = max(1, len(blocks) // 64)
    return torch.cat([read_delta(slice(b.start, b.start + 4)).abs().reshape(-1) for b in blocks[::step]])
