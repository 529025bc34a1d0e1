"""ONNX Runtime backend: CPU execution provider, CUDA when present and asked for.

Settings: ``graph_optimization`` (none | basic | extended | all, default all), ``profile_prefix``
(turns on ONNX Runtime's per-operator profiler, trace files named with this prefix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BackendError
from compressor.runtime.backends import RuntimeOptions
from compressor.runtime.portable import ONNX_DTYPES, input_layout, to_layout


class OnnxRuntimeSession:
    def __init__(self, path: Path, options: RuntimeOptions):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = options.settings.get("graph_optimization", "all")
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        if prefix := options.settings.get("profile_prefix"):
            so.enable_profiling = True
            so.profile_file_prefix = str(prefix)
        providers = ["CPUExecutionProvider"]
        if options.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                msg = "onnxruntime: CUDA execution provider is not available in this onnxruntime build"
                raise BackendError(msg)
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            msg = f"onnxruntime cannot load {path}: {str(err).splitlines()[0]}"
            raise BackendError(msg) from err
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = inp.shape
        self.input_type = inp.type
        self.layout = input_layout(inp.shape)
        self.input_dtype = ONNX_DTYPES.get(inp.type, np.float32)
        self.version = ort.__version__
        self.providers = self.session.get_providers()
        self.threads = options.threads
        self.path = path

    def batch_sizes(self) -> tuple[int, ...] | None:
        first = self.input_shape[0]
        return (first,) if isinstance(first, int) else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = to_layout(batch, self.layout)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)})
        return np.asarray(out[0], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "version": self.version, "provider": self.providers[0],
                "device": "cuda" if self.providers[0].startswith("CUDA") else "cpu", "threads": self.threads,
                "layout": self.layout, "input_dtype": np.dtype(self.input_dtype).name, "kernels": self.kernels()}

    def kernels(self) -> dict[str, Any]:
        """ONNX Runtime's integer path: the file's quantization format (QDQ pairs that ORT fuses, or
        QOperator ops) and the int8 instruction set MLAS dispatches its u8s8 kernels to on this CPU (MLAS does
        not report its kernel, so this is read from the CPU flags: amx_int8 > avx512_vnni > avx_vnni > avx2)."""
        try:
            import onnx

            types = {n.op_type for n in onnx.load(str(self.path), load_external_data=False).graph.node}
        except Exception:  # noqa: BLE001 - a file ORT can run but onnx cannot parse reports nothing
            return {}
        fmt = ("qoperator" if any(t.startswith("QLinear") or t in ("ConvInteger", "MatMulInteger") for t in types)
               else "qdq" if "DequantizeLinear" in types else "float")
        out: dict[str, Any] = {"int8_format": fmt}
        if fmt != "float" and self.providers[0] == "CPUExecutionProvider":
            from compressor.runtime.envinfo import cpu_info

            features = set(cpu_info()["features"])
            out["mlas_int8_isa"] = next((f for f in ("amx_int8", "avx512_vnni", "avx_vnni", "avx2", "neon", "dotprod")
                                         if f in features), "generic")
        return out


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def load(self, path: Path, meta: dict[str, Any], options: RuntimeOptions) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(path, options)
