"""ONNX export agreement and metadata, the benchmark's result schema, and latency statistics."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compressor.engine import run_recipe
from compressor.errors import ExportError
from compressor.export.agreement import check_agreement, run_batched
from compressor.recipe import validate_document
from compressor.runtime.measure import latency_stats, measure_latency
from tests.conftest import needs_fmnist

ROW_FIELDS = {
    "stage", "artifact", "format", "precision", "backend", "batch", "size_bytes", "macs", "params", "status",
    "top1", "top5", "accuracy_images", "top1_agreement", "max_abs_error", "iterations", "median_ms", "p90_ms",
    "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "cv", "throughput_ips", "runtime",
}


@needs_fmnist
def test_onnx_export_metadata_agreement_and_bench_schema(tiny_recipe: dict[str, Any]) -> None:
    import onnx

    doc = copy.deepcopy(tiny_recipe)
    doc["stages"].insert(3, {"name": "onnx_fixed", "type": "export_onnx", "input": "teacher",
                             "dynamic_batch": False, "batch_size": 4, "exporter": "torchscript", "opset": 17})
    doc["stages"][-1]["inputs"] = ["teacher", "onnx", "onnx_fixed"]
    doc["stages"][-1]["batch_sizes"] = [1, 4]
    result = run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)
    art = {r.name: r for r in result.records}
    path = art["onnx"].artifact.path(Path(doc["output"]) / "cache")
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"])[0] == "T-shirt/top"
    assert json.loads(props["preprocess"])["mean"] == [0.286]
    assert not list(path.parent.glob("*.data")), "one self-contained file"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    fixed = onnx.load(str(art["onnx_fixed"].artifact.path(Path(doc["output"]) / "cache")))
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert art["onnx_fixed"].metrics["top1_agreement"] >= 99.9

    rows = json.loads((Path(doc["output"]) / "cache" / art["bench"].key / "results.json").read_text())["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 5  # the fixed-batch file runs only at batch 4
    for row in ok:
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        assert row["iterations"] >= 5 and row["median_ms"] > 0
        assert row["top1_agreement"] >= 99.9
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert skipped and "fixed batch of 4" in skipped[0]["reason"]
    torch_top1 = next(r["top1"] for r in ok if r["backend"] == "pytorch" and r["batch"] == 1)
    onnx_top1 = next(r["top1"] for r in ok if r["backend"] == "onnxruntime" and r["batch"] == 1)
    assert abs(torch_top1 - onnx_top1) <= 1.0
    assert "| onnx | onnx | fp32 | onnxruntime | 1 |" in (Path(doc["output"]) / "report.md").read_text()


def test_agreement_failure_names_format_and_figures() -> None:
    ref = np.eye(4, dtype=np.float32)
    cand = ref[:, ::-1].copy()
    with pytest.raises(ExportError, match=r"tflite fp16 artifact agrees with PyTorch on only 0.00% of 4 "):
        check_agreement("tflite", "fp16", cand, ref, 99.0)
    assert check_agreement("onnx", "fp32", ref, ref, 99.9)["top1_agreement"] == 100.0


def test_run_batched_pads_fixed_batch() -> None:
    seen = []

    def fn(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return x.reshape(len(x), -1)[:, :2]

    out = run_batched(fn, np.ones((10, 1, 2, 2), np.float32), (4,))
    assert out.shape == (10, 2) and seen == [4, 4, 4]


def test_latency_stats_and_minimum_iterations() -> None:
    stats = latency_stats([1_000_000, 2_000_000, 3_000_000, 4_000_000])
    assert stats["median_ms"] == 2.5 and stats["min_ms"] == 1.0 and stats["iterations"] == 4
    assert stats["p90_ms"] >= stats["median_ms"] and stats["cv"] > 0
    calls = []
    measured = measure_latency(lambda: calls.append(1), warmup=3, min_iters=20, time_budget_s=0.0, max_iters=100)
    assert measured["iterations"] == 20 and len(calls) == 23
