"""The runtime helpers that must behave the same in this process and on a device: standard library and
numpy only, so the benchmark runner ships this file beside itself (``stage_job`` copies it).

One implementation of: the input layout a file wants, float <-> int8/uint8 (de)quantization, the input
dtype of an ONNX tensor type, the latency loop and its statistics, and the CPU's features. The in-process
backends, :mod:`compressor.runtime.measure`, :mod:`compressor.runtime.envinfo` and
``runtime/targets/runner.py`` all import them from here. Do not import compressor (or anything but numpy).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Features that decide INT8 and FP16 speed: x86 flag names and ARM hwcaps as /proc/cpuinfo spells them.
CPU_FEATURES = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16", "amx_tile": "amx_tile", "amx_int8": "amx_int8", "f16c": "f16c",
    "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "fphp": "fp16", "bf16": "bf16",
}
# Environment variables that cap the instruction set a runtime dispatches to (oneDNN inside OpenVINO
# reads ONEDNN_MAX_CPU_ISA, e.g. AVX2 to measure a CPU without VNNI on one that has it).
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
INT8_DOT_PRODUCT = {"avx512_vnni", "avx_vnni", "dotprod", "amx_int8"}
# ONNX tensor element types -> numpy dtypes a session is fed with.
ONNX_DTYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                               "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, the features that decide INT8/FP16 speed, and any ISA cap in force."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and value.strip():
                model = value.strip()
            elif key == "cpu part" and model in (platform.machine(), platform.processor()):
                model = f"{platform.machine()} part {value.strip()}"
            elif key in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    features = sorted({name for flag, name in CPU_FEATURES.items() if flag in flags})
    return {
        "arch": platform.machine(),
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "features": features,
        "int8_dot_product": "vnni/dotprod" if INT8_DOT_PRODUCT & set(features) else "no int8 dot-product",
        "isa_caps": {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)},
    }


def input_layout(shape: Sequence[Any], declared: str | None = None) -> str:
    """NCHW or NHWC: what the file's metadata declares, else a guess from a 4-D shape with 1 or 3 channels."""
    if declared in ("NCHW", "NHWC"):
        return declared
    if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


def to_layout(batch: np.ndarray, layout: str) -> np.ndarray:
    """A preprocessed NCHW batch in the layout the file wants."""
    return batch.transpose(0, 2, 3, 1) if layout == "NHWC" else batch


def quantize(x: np.ndarray, dtype: Any, scale: float, zero_point: int) -> np.ndarray:
    """Float input to the integer type of a quantized tensor: round half to even, add the zero point, saturate
    (TFLite's reference ``Quantize`` rounds ``x / scale`` before the zero point is added)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point,
                   info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """An int8/uint8 output back to float32."""
    return ((y.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)


def latency_stats(samples_ns: Sequence[int]) -> dict[str, Any]:
    """Median, p90, p99, mean, std, min, max, CV and 21 quantiles (every 5%) of per-call times, in ms."""
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
        **quantile_intervals(ms),
    }


def quantile_intervals(ms: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals of the median, p90 and p99 (``median_ci_ms``, ...), seeded so
    every machine gives the same; the same resampling as ``compressor.metrics.stats.bootstrap_quantiles``
    (which this file cannot import; a test holds the two equal)."""
    keys = ("median", "p90", "p99")
    if len(ms) < 2:
        v = round(float(ms[0]), 4) if len(ms) else 0.0
        return {f"{k}_ci_ms": [v, v] for k in keys}
    rng = np.random.default_rng(seed)
    draws = []
    chunk = max(1, 2_000_000 // len(ms))
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(ms), size=(min(chunk, resamples - start), len(ms)))
        draws.append(np.percentile(ms[idx], [50, 90, 99], axis=1).T)
    stack = np.concatenate(draws)
    out = {}
    for j, key in enumerate(keys):
        lo, hi = np.percentile(stack[:, j], [2.5, 97.5])
        out[f"{key}_ci_ms"] = [round(float(lo), 4), round(float(hi), 4)]
    return out


def steady(measure: Callable[[], dict[str, Any]], max_cv: float | None) -> dict[str, Any]:
    """``measure()``, and once more when its coefficient of variation is above ``max_cv``.

    The second measurement is kept (``first_cv``: the first one's); one still above the limit is marked
    ``noisy``. ``max_cv`` None: measured once, never marked.
    """
    stats = measure()
    if max_cv is None or float(stats.get("cv", 0.0)) <= max_cv:
        return {**stats, "remeasured": False, "noisy": False}
    first = float(stats["cv"])
    stats = measure()
    return {**stats, "remeasured": True, "first_cv": first, "noisy": float(stats.get("cv", 0.0)) > max_cv}


def time_calls(fn: Callable[[], Any], *, warmup: int, min_iters: int, time_budget_s: float,
               max_iters: int) -> list[int]:
    """Per-call times (ns) of ``fn``, one call at a time: ``warmup`` untimed calls, then at least
    ``min_iters`` timed ones, more until ``time_budget_s`` is spent, at most ``max_iters``."""
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    deadline = time.perf_counter_ns() + int(time_budget_s * 1e9)
    while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter_ns() < deadline):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return samples
