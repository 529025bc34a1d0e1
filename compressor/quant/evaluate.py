"""Run quantized and float models in their own runtime to measure top-1 agreement and latency.

These helpers call the runtimes directly so the ``quantize`` stage can judge its own output; the
runtime backends of ``compressor.backends`` may replace them once every format has one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def cpu_has_vnni() -> bool:
    """Whether the CPU advertises 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
    from compressor.envinfo import cpu_info

    return bool({"avx512_vnni", "avx_vnni"} & set(cpu_info()["features"]))


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
    """The LiteRT backend's session (XNNPACK; int8 I/O quantized with the file's own parameters)."""
    from compressor.backends import RuntimeOptions, get_backend
    from compressor.verify import run_batched

    session = get_backend("litert").load(Path(path), {}, RuntimeOptions(threads=threads))
    fixed = session.batch_sizes()

    def run(batch: np.ndarray) -> np.ndarray:
        return run_batched(session.run, batch, fixed)

    return run


def logits(run: Runner, images: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([run(images[i : i + batch]) for i in range(0, len(images), batch)])


# outputs (logits or embeddings), labels -> the task's primary metric in percent
Scorer = Callable[[np.ndarray, np.ndarray], float]


def top1_score(outputs: np.ndarray, labels: np.ndarray) -> float:
    return round(float((outputs.argmax(1) == labels).mean()) * 100, 3)


def top1(run: Runner, images: np.ndarray, labels: np.ndarray, scorer: Scorer | None = None) -> float:
    """Top-1 in percent, or the task's primary metric when ``scorer`` is given (rank-1 / mAP for embeddings)."""
    return round((scorer or top1_score)(logits(run, images), labels), 3)


def latency_ms(run: Runner, sample: np.ndarray, warmup: int = 10, min_iters: int = 30,
               budget_s: float = 2.0) -> dict[str, float]:
    """Batch latency of ``run`` on ``sample`` through the project's timer (:mod:`compressor.measure`)."""
    from compressor.measure import measure_latency

    return measure_latency(lambda: run(sample), warmup=warmup, min_iters=min_iters, time_budget_s=budget_s,
                           max_iters=10 * min_iters + 10000)
