"""Per-layer sensitivity: quantize one layer at a time and measure how far its output moves from FP32."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compressor.artifacts import write_json, write_text
from compressor.quant.evaluate import Runner, logits

# excluded layer names -> a runner of the model quantized with those layers kept in float
QuantizeFn = Callable[[Sequence[str]], Runner]


def layer_sensitivity(quantize: QuantizeFn, layers: Sequence[str], images: np.ndarray, labels: np.ndarray,
                      reference: np.ndarray, progress: Callable[[Any, str], Any] | None = None,
                      ) -> list[dict[str, Any]]:
    """One row per layer, most sensitive first.

    Each layer is quantized alone (every other layer kept float); the rows give the logits' mean
    squared error against FP32 (the ranking key), top-1 agreement with FP32 and top-1 on ``labels``.
    """
    rows = []
    items = progress(layers, "sensitivity") if progress else layers
    scale = float(np.mean(reference**2)) or 1.0
    for layer in items:
        out = logits(quantize([other for other in layers if other != layer]), images)
        rows.append({
            "layer": layer,
            "relative_mse": round(float(np.mean((out - reference) ** 2)) / scale, 6),
            "top1_agreement": round(float((out.argmax(1) == reference.argmax(1)).mean()) * 100, 3),
            "top1": round(float((out.argmax(1) == labels).mean()) * 100, 3),
        })
    return sorted(rows, key=lambda r: -r["relative_mse"])


def write_report(out_dir: Path, rows: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, str]:
    """``sensitivity.json`` and ``sensitivity.md`` (top offenders first); returns the file roles."""
    write_json(out_dir / "sensitivity.json", {**context, "layers": rows})
    lines = [
        f"# Per-layer INT8 sensitivity ({context.get('format')}, {context.get('engine')})", "",
        "Each layer quantized alone, every other layer in float; error against the FP32 logits on "
        f"{context.get('images')} validation images. FP32 top-1 {context.get('fp32_top1')}.", "",
        "| rank | layer | relative MSE | top-1 agreement % | top-1 % |", "|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {i + 1} | `{r['layer']}` | {r['relative_mse']:.6f} | {r['top1_agreement']:.2f} | {r['top1']:.2f} |"
              for i, r in enumerate(rows)]
    write_text(out_dir / "sensitivity.md", "\n".join(lines) + "\n")
    return {"sensitivity_json": "sensitivity.json", "sensitivity_md": "sensitivity.md"}
