"""Per-layer sensitivity: quantize one layer at a time and measure how far its output moves from FP32."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compressor.core.artifacts import write_json, write_text
from compressor.metrics.evaluation import CLASSIFICATION, Task
from compressor.quant.runners import Runner, logits

# excluded layer names -> a runner of the model quantized with those layers kept in float
QuantizeFn = Callable[[Sequence[str]], Runner]


def layer_sensitivity(quantize: QuantizeFn, layers: Sequence[str], images: np.ndarray, labels: np.ndarray,
                      reference: np.ndarray, progress: Callable[[Any, str], Any] | None = None,
                      task: Task = CLASSIFICATION) -> list[dict[str, Any]]:
    """One row per layer, most sensitive first.

    Each layer is quantized alone (every other layer kept float); the rows give the logits' mean
    squared error against FP32 (the ranking key), top-1 agreement with FP32 and top-1 on ``labels``.
    """
    rows = []
    items = progress(layers, "sensitivity") if progress else layers
    scale = float(np.mean(reference**2)) or 1.0
    for layer in items:
        out = logits(quantize([other for other in layers if other != layer]), images)
        row: dict[str, Any] = {"layer": layer, "relative_mse": round(float(np.mean((out - reference) ** 2)) / scale, 6)}
        if task.is_embedding:  # embeddings: cosine to FP32 and the retrieval metric instead of top-1
            row["mean_cosine"] = task.agreement(out, reference)["mean_cosine"]
            row[task.primary] = round(task.value(out, labels), 3)
        else:
            row["top1_agreement"] = round(float((out.argmax(1) == reference.argmax(1)).mean()) * 100, 3)
            row["top1"] = round(float((out.argmax(1) == labels).mean()) * 100, 3)
        rows.append(row)
    return sorted(rows, key=lambda r: -r["relative_mse"])


def write_report(out_dir: Path, rows: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, str]:
    """``sensitivity.json`` and ``sensitivity.md`` (top offenders first); returns the file roles."""
    write_json(out_dir / "sensitivity.json", {**context, "layers": rows})
    lines = [
        f"# Per-layer INT8 sensitivity ({context.get('format')}, {context.get('engine')})", "",
        "Each layer quantized alone, every other layer in float; error against the FP32 logits on "
        f"{context.get('images')} validation images. FP32 {context.get('metric', 'top-1')} "
        f"{context.get('fp32_score', context.get('fp32_top1'))}.", "",
    ]
    if rows and "mean_cosine" in rows[0]:
        key = next(k for k in rows[0] if k not in ("layer", "relative_mse", "mean_cosine"))
        lines += [f"| rank | layer | relative MSE | mean cosine to FP32 | {key} % |", "|---:|---|---:|---:|---:|"]
        lines += [f"| {i + 1} | `{r['layer']}` | {r['relative_mse']:.6f} | {r['mean_cosine']:.4f} | {r[key]:.2f} |"
                  for i, r in enumerate(rows)]
    else:
        lines += ["| rank | layer | relative MSE | top-1 agreement % | top-1 % |", "|---:|---|---:|---:|---:|"]
        lines += [f"| {i + 1} | `{r['layer']}` | {r['relative_mse']:.6f} | {r['top1_agreement']:.2f} | {r['top1']:.2f} |"
                  for i, r in enumerate(rows)]
    write_text(out_dir / "sensitivity.md", "\n".join(lines) + "\n")
    return {"sensitivity_json": "sensitivity.json", "sensitivity_md": "sensitivity.md"}
