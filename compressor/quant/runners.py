"""Run quantized and float models in their own runtime to measure top-1 agreement and latency.

Every runner is a session of the project's runtime backend (:mod:`compressor.runtime.backends`), so the
``quantize`` stage judges its output with the same settings the benchmark measures it with. The one
exception is the compiled model NNCF hands to an accuracy-control callback, which is run as it is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def cpu_has_vnni() -> bool:
    """Whether the CPU advertises 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
    from compressor.runtime.envinfo import cpu_info

    return bool({"avx512_vnni", "avx_vnni"} & set(cpu_info()["features"]))


def int8_saturates(runtime: str) -> bool:
    """Whether ``runtime``'s x86 int8 kernels on this CPU multiply u8 x s8 pairs into int16
    (``vpmaddubsw``), which saturates for full 8-bit weights: x86 without VNNI, and for OpenVINO also an
    ``ONEDNN_MAX_CPU_ISA`` cap below VNNI (oneDNN then dispatches those kernels on a VNNI CPU too).
    ONNX Runtime's MLAS has no such cap. Arm's int8 dot products do not saturate."""
    import platform

    from compressor.runtime.envinfo import cpu_info

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not cpu_has_vnni():
        return True
    caps = {v.upper() for v in cpu_info()["isa_caps"].values()}
    return runtime == "openvino" and bool(caps & {"SSE41", "AVX", "AVX2", "AVX512_CORE"})


def _session_runner(backend: str, path: Path, threads: int, settings: dict[str, Any]) -> tuple[Runner, Any]:
    from compressor.export.agreement import run_batched
    from compressor.runtime.backends import RuntimeOptions, get_backend

    session = get_backend(backend).load(Path(path), {}, RuntimeOptions(threads=threads, settings=settings))
    fixed = session.batch_sizes()

    def run(batch: np.ndarray) -> np.ndarray:
        return run_batched(session.run, batch, fixed)

    return run, session


def onnx_runner(model: str | Path | bytes, threads: int, profile_prefix: str | None = None) -> Runner:
    """The ONNX Runtime backend's CPU session over a file or a serialized model (``.session``: the
    ``InferenceSession``, for its profiler)."""
    settings = {"profile_prefix": profile_prefix} if profile_prefix is not None else {}
    if isinstance(model, bytes):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "candidate.onnx"
            path.write_bytes(model)
            run, session = _session_runner("onnxruntime", path, threads, settings)
    else:
        run, session = _session_runner("onnxruntime", Path(model), threads, settings)
    run.session = session.session  # type: ignore[attr-defined]
    return run


def openvino_runner(model: Any, threads: int, hint: str = "LATENCY", perf_counters: bool = False) -> Runner:
    """The OpenVINO backend's CPU session over an IR path or an ``ov.Model`` (``.request``: the infer
    request, for its per-layer counters); an ``ov.CompiledModel`` (from NNCF) runs as compiled."""
    import openvino as ov

    if isinstance(model, ov.CompiledModel):
        from compressor.export.agreement import run_batched

        request = model.create_infer_request()
        first = model.input(0).get_partial_shape()[0]
        fixed = (first.get_length(),) if first.is_static else None

        def run_compiled(batch: np.ndarray) -> np.ndarray:
            return run_batched(lambda x: np.asarray(request.infer({0: np.ascontiguousarray(x, np.float32)})[0],
                                                    np.float32), batch, fixed)

        run_compiled.request = request  # type: ignore[attr-defined]
        return run_compiled
    settings = {"hint": hint.lower(), "perf_counters": perf_counters}
    if isinstance(model, ov.Model):
        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / "model.xml"
            ov.save_model(model, str(xml), compress_to_fp16=False)
            run, session = _session_runner("openvino", xml, threads, settings)
    else:
        run, session = _session_runner("openvino", Path(model), threads, settings)
    run.request = session.request  # type: ignore[attr-defined]
    return run


def tflite_runner(path: str | Path, threads: int) -> Runner:
    """The LiteRT backend's session (XNNPACK; int8 I/O quantized with the file's own parameters)."""
    return _session_runner("litert", Path(path), threads, {})[0]


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
    """Batch latency of ``run`` on ``sample`` through the project's timer (:mod:`compressor.runtime.measure`)."""
    from compressor.runtime.measure import measure_latency

    return measure_latency(lambda: run(sample), warmup=warmup, min_iters=min_iters, time_budget_s=budget_s,
                           max_iters=10 * min_iters + 10000)
