"""Run quantized and float models in their own runtime to measure top-1 agreement and latency.

These helpers call the runtimes directly so the ``quantize`` stage can judge its own output; the
runtime backends of ``compressor.backends`` may replace them once every format has one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def cpu_has_vnni() -> bool:
    """Whether the CPU advertises 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def onnx_runner(model: str | Path | bytes, threads: int, profile_prefix: str | None = None) -> Runner:
    """ONNX Runtime CPU session over a file or serialized model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0], np.float32)

    run.session = session  # type: ignore[attr-defined]
    return run


def openvino_runner(model: Any, threads: int, hint: str = "LATENCY", perf_counters: bool = False) -> Runner:
    """OpenVINO CPU compiled model over an ``ov.Model``, a path or an ``ov.CompiledModel``."""
    import openvino as ov

    if isinstance(model, ov.CompiledModel):
        compiled = model
    else:
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint,
                                  "INFERENCE_PRECISION_HINT": "f32"}
        if perf_counters:
            config["PERF_COUNT"] = True
        compiled = core.compile_model(str(model) if isinstance(model, Path) else model, "CPU", config)
    request = compiled.create_infer_request()
    shape = compiled.input(0).get_partial_shape()
    fixed = shape[0].is_static

    def run(batch: np.ndarray) -> np.ndarray:
        if fixed and batch.shape[0] != shape[0].get_length():
            return np.concatenate([run(batch[i : i + 1]) for i in range(len(batch))])
        request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return np.asarray(request.get_output_tensor(0).data, np.float32).copy()

    run.request = request  # type: ignore[attr-defined]
    return run


def tflite_runner(path: str | Path, threads: int) -> Runner:
    """LiteRT interpreter (XNNPACK delegate by default); quantizes int8 inputs and dequantizes outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    batch_fixed = int(inp["shape"][0])
    nhwc = len(inp["shape"]) == 4 and inp["shape"][-1] in (1, 3) and inp["shape"][1] not in (1, 3)
    interp.allocate_tensors()

    def one(batch: np.ndarray) -> np.ndarray:
        x = batch.transpose(0, 2, 3, 1) if nhwc else batch
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        interp.set_tensor(inp["index"], np.ascontiguousarray(x, inp["dtype"]))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, np.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        if len(batch) == batch_fixed:
            return one(batch)
        return np.concatenate([one(batch[i : i + batch_fixed]) for i in range(0, len(batch), batch_fixed)])

    run.interpreter = interp  # type: ignore[attr-defined]
    return run


def logits(run: Runner, images: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([run(images[i : i + batch]) for i in range(0, len(images), batch)])


def top1(run: Runner, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 in percent."""
    return round(float((logits(run, images).argmax(1) == labels).mean()) * 100, 3)


def latency_ms(run: Runner, sample: np.ndarray, warmup: int = 10, min_iters: int = 30,
               budget_s: float = 2.0) -> dict[str, float]:
    """Batch-1 latency: median and p90 in milliseconds (``time.perf_counter_ns``)."""
    for _ in range(warmup):
        run(sample)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter_ns()
        run(sample)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if len(times) >= 10 * min_iters and time.perf_counter() - start >= budget_s:
            break
    arr = np.asarray(times)
    return {"median_ms": round(float(np.median(arr)), 4), "p90_ms": round(float(np.percentile(arr, 90)), 4),
            "iters": len(times)}
