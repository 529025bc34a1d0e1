"""Latency measurement: warm-up, a minimum count and a time budget, perf_counter_ns, robust statistics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def latency_stats(samples_ns: list[int]) -> dict[str, Any]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    return {
        "iterations": int(len(ms)),
        "median_ms": round(float(np.median(ms)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(mean, 4),
        "std_ms": round(std, 4),
        "min_ms": round(float(ms.min()), 4),
        "max_ms": round(float(ms.max()), 4),
        "cv": round(std / mean, 4) if mean > 0 else 0.0,
        # every 5%: enough to draw the distribution without keeping every sample
        "quantiles_ms": [round(float(q), 4) for q in np.percentile(ms, np.linspace(0, 100, 21))],
    }


def measure_latency(
    fn: Callable[[], Any], *, warmup: int, min_iters: int, time_budget_s: float, max_iters: int,
) -> dict[str, Any]:
    """Time ``fn`` one call at a time: at least ``min_iters`` calls, more until ``time_budget_s`` is spent."""
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    deadline = time.perf_counter_ns() + int(time_budget_s * 1e9)
    while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter_ns() < deadline):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return latency_stats(samples)
