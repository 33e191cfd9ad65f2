"""Timing a call on the CPU: the median of warm runs, the one way every cost table here measures latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["median_latency_us"]


def median_latency_us(run: Callable[[], object], *, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of `runs` calls of `run` after `warmup` calls, in microseconds."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6
