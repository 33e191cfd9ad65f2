"""Timing calls on the CPU: the median of warm runs, the one way every cost table here measures latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["median_latency_us", "interleaved_latency_us"]


def median_latency_us(run: Callable[[], object], *, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of `runs` calls of `run` after `warmup` calls, in microseconds."""
    return interleaved_latency_us({"run": run}, runs=runs, warmup=warmup)["run"]


def interleaved_latency_us(
    calls: dict[str, Callable[[], object]], *, runs: int = 20, warmup: int = 3, budget_s: float | None = None
) -> dict[str, float]:
    """The median wall time of each call in microseconds, the calls timed one after another in turn, `runs`
    rounds after `warmup` rounds: load from other processes then weighs on every call alike, so their ratios
    hold on a busy machine. Each round starts one call later than the last, so that no call always runs
    after the same one (whose leftovers in the caches would favour or slow it). With `budget_s`, as many rounds
    as fit in about that time (at least 5, at most `runs`)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    if budget_s is not None:
        started = time.perf_counter()
        for call in calls.values():
            call()
        runs = int(min(max(budget_s / max(time.perf_counter() - started, 1e-9), 5), runs))
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    for round_ in range(runs):
        start = round_ % len(order)
        for name, call in order[start:] + order[:start]:
            begun = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - begun)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}
