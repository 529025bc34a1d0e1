"""Latency measurement in this process: the loop, statistics (with bootstrap intervals of the median, p90
and p99) and noisy-run re-measurement of :mod:`compressor.runtime.portable` (the same code the benchmark
runner ships to a device)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compressor.runtime.portable import latency_stats, steady, time_calls

__all__ = ["DEFAULT_MAX_CV", "latency_stats", "measure_latency", "measure_steady"]

# Above this coefficient of variation (std / mean) a benchmark row is measured once more.
DEFAULT_MAX_CV = 0.2
measure_steady = steady


def measure_latency(
    fn: Callable[[], Any], *, warmup: int, min_iters: int, time_budget_s: float, max_iters: int,
) -> dict[str, Any]:
    """Time ``fn`` one call at a time: at least ``min_iters`` calls, more until ``time_budget_s`` is spent."""
    return latency_stats(time_calls(fn, warmup=warmup, min_iters=min_iters, time_budget_s=time_budget_s,
                                    max_iters=max_iters))
