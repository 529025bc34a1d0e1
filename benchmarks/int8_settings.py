"""Sweep INT8 speed settings per runtime on one FP32 ONNX file, batch 1, 1 and 2 threads.

    python benchmarks/int8_settings.py runs/ptq_r18 [onnxruntime|openvino]   # the run's export_onnx output

ONNX Runtime: QDQ vs QOperator, per-tensor vs per-channel, reduce_range on/off. OpenVINO: NNCF
performance vs mixed preset, depthwise convolutions kept in float or not, LATENCY vs THROUGHPUT
hint. LiteRT is covered by bench_int8.py (XNNPACK is the interpreter's default delegate; int8 runs
through its QS8 kernels).

On a CPU with VNNI, ``ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/int8_settings.py RUN`` measures
OpenVINO as it runs on an AVX2 CPU without VNNI (oneDNN dispatches AVX2 kernels; real timings, not
emulation). ONNX Runtime and XNNPACK have no such switch.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    from compressor.quant import evaluate
    from compressor.quant.onnxruntime import OrtQuantOptions, quantize_ort

    run = Path(sys.argv[1])
    only = sys.argv[2] if len(sys.argv) > 2 else None
    manifest = json.loads((run / "manifest.json").read_text())
    src_stage = next(s for s in manifest["stages"] if s["type"] == "export_onnx")
    src = run / next(f["path"] for f in src_stage["files"] if f["role"] == "model")
    shape = src_stage["artifact"]["meta"]["input_shape"]
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, *shape)).astype(np.float32)
    sample = calib[:1]
    rows = []
    base = {t: evaluate.latency_ms(evaluate.onnx_runner(src, t), sample)["median_ms"] for t in (1, 2)}
    rows.append({"runtime": "onnxruntime", "setting": "fp32", **{f"ms_{t}t": v for t, v in base.items()}})
    ort_settings = [] if only == "openvino" else list(itertools.product(("qdq", "qoperator"), (False, True), (False, True)))
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, per_channel, reduce in ort_settings:
            dst = Path(tmp) / f"{fmt}{per_channel}{reduce}.onnx"
            quantize_ort(src, dst, calib, OrtQuantOptions(quant_format=fmt), per_channel, reduce)
            ms = {t: evaluate.latency_ms(evaluate.onnx_runner(dst, t), sample)["median_ms"] for t in (1, 2)}
            rows.append({"runtime": "onnxruntime", "setting": f"{fmt} per_channel={per_channel} reduce_range={reduce}",
                         **{f"ms_{t}t": v for t, v in ms.items()},
                         **{f"x_{t}t": round(base[t] / ms[t], 2) for t in ms}})
            print(json.dumps(rows[-1]))
        from compressor.quant import openvino as ov_q
        from compressor.quant.plans import nncf_kwargs

        if only != "onnxruntime":
            model = ov_q.read_ov_model(src)
            variants = {
                "performance": nncf_kwargs("performance", "fast", 64, {}),
                "mixed": nncf_kwargs("mixed", "fast", 64, {}),
                "performance, depthwise float": nncf_kwargs("performance", "fast", 64, {"types": ["GroupConvolution"]}),
            }
            quantized = {name: ov_q.quantize_ov(model.clone(), calib, kw) for name, kw in variants.items()}
            for hint in ("LATENCY", "THROUGHPUT"):
                f = {t: evaluate.latency_ms(evaluate.openvino_runner(model, t, hint), sample)["median_ms"] for t in (1, 2)}
                for name, q in quantized.items():
                    i = {t: evaluate.latency_ms(evaluate.openvino_runner(q, t, hint), sample)["median_ms"] for t in (1, 2)}
                    rows.append({"runtime": "openvino", "setting": f"{name} hint={hint}",
                                 **{f"fp32_ms_{t}t": f[t] for t in f}, **{f"ms_{t}t": i[t] for t in i},
                                 **{f"x_{t}t": round(f[t] / i[t], 2) for t in i}})
                    print(json.dumps(rows[-1]))
    from compressor.runtime.envinfo import cpu_info

    cpu = cpu_info()
    caps = "".join(f"-{v}" for v in cpu["isa_caps"].values()).lower()
    (run / f"int8_settings{caps}.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
