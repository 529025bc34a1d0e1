"""The report's figures stay readable: labels of the accuracy-vs-latency plot do not overlap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")


def _demo_like_rows() -> list[dict[str, Any]]:
    """Ten artifacts as the demo measures them: the INT8 and FP32 files of one student crowd together."""
    spec = [("teacher", "model", "fp32", "pytorch", 2.1, 88.0), ("teacher_onnx", "onnx", "fp32", "onnxruntime", 0.9, 88.0),
            ("pruned", "model", "fp32", "pytorch", 1.4, 87.6), ("student", "model", "fp32", "pytorch", 1.1, 86.9),
            ("onnx", "onnx", "fp32", "onnxruntime", 0.33, 86.9), ("openvino", "openvino", "fp32", "openvino", 0.71, 86.9),
            ("tflite", "tflite", "fp32", "litert", 0.35, 86.9), ("int8_onnx", "onnx", "int8", "onnxruntime", 0.32, 86.7),
            ("int8_openvino", "openvino", "int8", "openvino", 0.73, 86.8), ("int8_tflite", "tflite", "int8", "litert", 0.34, 86.6)]
    return [{"stage": s, "format": f, "precision": p, "backend": b, "median_ms": ms, "top1": acc, "status": "ok",
             "batch": 1, "mode": "latency"} for s, f, p, b, ms, acc in spec]


def test_labels_of_crowded_points_do_not_overlap() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressor.report.plots import place_labels

    rows = _demo_like_rows()
    fig, ax = plt.subplots(figsize=(6, 4.8))
    pts = [(r["median_ms"], r["top1"]) for r in rows]
    ax.scatter(*zip(*pts, strict=True))
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)
    fig.tight_layout()
    from compressor.report.plots import label_of

    labels = place_labels(ax, pts, [label_of(r) for r in rows])
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer) for a in labels]  # the text boxes, without leader lines
    clashes = [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes))
               for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    plt.close(fig)
    assert clashes == []


def test_accuracy_vs_latency_figure_is_written(tmp_path: Path) -> None:
    from compressor.report.plots import accuracy_vs_latency

    path = accuracy_vs_latency(_demo_like_rows(), None, tmp_path / "acc.png")
    assert path is not None and path.stat().st_size > 10_000
