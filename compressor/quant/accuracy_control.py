"""Accuracy control for every runtime: return the most sensitive layers to float until the drop fits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compressor.errors import AccuracyGoalError
from compressor.metrics.names import HEADLINE, key_of
from compressor.metrics.names import label as metric_label
from compressor.quant.runners import Scorer, top1
from compressor.quant.sensitivity import QuantizeFn


@dataclass
class ControlResult:
    """What the fallback settled on and every attempt it made."""

    excluded: list[str]
    top1: float
    attempts: list[dict[str, Any]] = field(default_factory=list)


def attempts_table(attempts: Sequence[dict[str, Any]]) -> str:
    key = next((k for k in HEADLINE if attempts and k in attempts[0]), "top1")
    label = metric_label(key)
    lines = [f"  layers in float | {label:>5} % | drop pt | last layer returned to float"]
    lines += [f"  {a['float_layers']:>15} | {a[key]:>7.2f} | {a['drop']:>7.2f} | {a['added'] or '-'}"
              for a in attempts]
    return "\n".join(lines)


def restore_until_within(quantize: QuantizeFn, ranking: Sequence[str], images: np.ndarray, labels: np.ndarray,
                         fp32_top1: float, max_drop: float, max_layers: int, fmt: str,
                         first: tuple[list[str], float] | None = None, scorer: Scorer | None = None,
                         metric: str = "top-1") -> ControlResult:
    """Keep the top-``k`` layers of ``ranking`` in float for k = 0, 1, ... until the drop is within limits.

    Raises:
        AccuracyGoalError: no k up to ``max_layers`` meets ``max_drop``; the message holds the table.
    """
    key = key_of(metric)
    attempts: list[dict[str, Any]] = []
    start = 0
    if first is not None:
        excluded, acc = first
        attempts.append({"float_layers": len(excluded), key: acc, "drop": round(fp32_top1 - acc, 3),
                         "added": None, "excluded": list(excluded)})
        if fp32_top1 - acc <= max_drop:
            return ControlResult(list(excluded), acc, attempts)
        start = 1
    for k in range(start, min(max_layers, len(ranking)) + 1):
        excluded = list(ranking[:k])
        acc = top1(quantize(excluded), images, labels, scorer)
        attempts.append({"float_layers": k, key: acc, "drop": round(fp32_top1 - acc, 3),
                         "added": ranking[k - 1] if k else None, "excluded": excluded})
        if fp32_top1 - acc <= max_drop:
            return ControlResult(excluded, acc, attempts)
    msg = (f"{fmt} INT8 cannot stay within max_accuracy_drop {max_drop} pt of FP32 {metric} {fp32_top1:.2f} "
           f"with up to {max_layers} layers in float (option max_float_layers); tried:\n{attempts_table(attempts)}\n"
           "raise max_float_layers or max_accuracy_drop, use more calibration images, or try mode: qat")
    raise AccuracyGoalError(msg, attempts)
