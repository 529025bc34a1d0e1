"""FP32 vs INT8 per runtime from a finished run: top-1 (from the quantize stages), batch-1 latency at
1 and 2 threads, size, and the top operators of each INT8 model's own profiler.

    python benchmarks/bench_int8.py runs/ptq_r18 [--budget 2] [--profile]

Latency is measured here with the helpers in compressor.quant.runners (perf_counter_ns, warm-up,
median of at least 30 runs within a time budget). Results go to <run>/int8_bench.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def _runner(fmt: str, path: Path, threads: int) -> Any:
    from compressor.quant import evaluate

    if fmt == "onnx":
        return evaluate.onnx_runner(path, threads)
    if fmt == "openvino":
        return evaluate.openvino_runner(path, threads)  # an ov.Model or an IR path
    return evaluate.tflite_runner(path, threads)


def _fp32_tflite(run: Path, manifest: dict[str, Any], stage: dict[str, Any]) -> Path:
    """The FP32 flatbuffer of the stage's source PyTorch model, converted with litert-torch."""
    import torch

    from compressor.quant.tflite import convert_fp32
    from compressor.train.models import load_model_artifact

    src = stage["artifact"]["meta"]["source_model"]
    weights = run / next(f["path"] for s in manifest["stages"] if s["key"] == src["id"]
                         for f in s["files"] if f["role"] == "weights")
    model = load_model_artifact(src["meta"], weights)
    path = run / "fp32_reference.tflite"
    if not path.exists():
        convert_fp32(model, torch.zeros(1, *stage["artifact"]["meta"]["input_shape"]), path)
    return path


def main() -> None:
    from compressor.quant import evaluate

    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fp32-onnx", type=Path, help="FP32 ONNX reference when the run has no export_onnx stage")
    args = ap.parse_args()
    manifest = json.loads((args.run / "manifest.json").read_text())
    rows = []
    for stage in manifest["stages"]:
        if stage["type"] != "quantize":
            continue
        fmt = stage["artifact"]["kind"]
        role = "xml" if fmt == "openvino" else "model"
        int8 = args.run / next(f["path"] for f in stage["files"] if f["role"] == role)
        onnx_stage = next((s for s in manifest["stages"] if s["type"] == "export_onnx"), None)
        fp32: Any = args.fp32_onnx if onnx_stage is None else (
            args.run / next(f["path"] for f in onnx_stage["files"] if f["role"] == "model"))
        if fmt == "openvino":
            from compressor.quant.openvino import read_ov_model

            fp32 = read_ov_model(fp32)
        elif fmt == "tflite":
            fp32 = _fp32_tflite(args.run, manifest, stage)
        shape = stage["artifact"]["meta"]["input_shape"]
        sample = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        m = stage["metrics"]
        row: dict[str, Any] = {"stage": stage["name"], "format": fmt, "mode": m["settings"]["mode"],
                               "fp32_top1": m["fp32_top1"], "int8_top1": m["int8_top1"], "drop": m["drop"],
                               "fp32_bytes": m.get("fp32_size_bytes"), "int8_bytes": m["size_bytes"]}
        for threads in (1, 2):
            f = evaluate.latency_ms(_runner(fmt, fp32, threads), sample, budget_s=args.budget)["median_ms"]
            i = evaluate.latency_ms(_runner(fmt, int8, threads), sample, budget_s=args.budget)["median_ms"]
            row[f"fp32_ms_{threads}t"], row[f"int8_ms_{threads}t"] = f, i
            row[f"speedup_{threads}t"] = round(f / i, 2)
        if args.profile and fmt == "onnx":
            from compressor.quant.onnxruntime import op_profile

            row["profile_int8"] = op_profile(int8, sample, 2)[:8]
            row["profile_fp32"] = op_profile(fp32, sample, 2)[:8]
        if args.profile and fmt == "openvino":
            from compressor.quant.openvino import perf_counters

            row["profile_int8"] = perf_counters(int8, sample, 2)[:8]
            row["profile_fp32"] = perf_counters(fp32, sample, 2)[:8]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("profile")}))
    (args.run / "int8_bench.json").write_text(json.dumps(rows, indent=2))
    lines = ["| stage | format | FP32 top-1 | INT8 top-1 | FP32 ms 1t | INT8 ms 1t | x | FP32 ms 2t | INT8 ms 2t | x "
             "| FP32 KB | INT8 KB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['format']} | {r['fp32_top1']} | {r['int8_top1']} | {r['fp32_ms_1t']} | "
                     f"{r['int8_ms_1t']} | {r['speedup_1t']} | {r['fp32_ms_2t']} | {r['int8_ms_2t']} | "
                     f"{r['speedup_2t']} | {(r['fp32_bytes'] or 0) // 1024} | {r['int8_bytes'] // 1024} |")
    (args.run / "int8_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
