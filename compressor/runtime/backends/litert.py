"""LiteRT backend: the TFLite interpreter of ``ai-edge-litert`` (XNNPACK delegate on by default).

Falls back to ``tflite_runtime.interpreter`` where only that older package exists. Settings:
``xnnpack`` (bool, default True). The session adapts NCHW float32 batches to the file's input: NHWC
layout, and int8/uint8 tensors quantized with the file's own scale and zero point (outputs dequantized).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BackendError, MissingExtraError
from compressor.runtime.backends import RuntimeOptions


def _interpreter_module() -> tuple[Any, str, str]:
    """(interpreter module, package name, version) of the LiteRT interpreter that is installed."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter

        return interpreter, "ai-edge-litert", str(getattr(ai_edge_litert, "__version__", "?"))
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter

        return interpreter, "tflite-runtime", str(getattr(tflite_runtime, "__version__", "?"))
    except ImportError as err:
        what = "the litert backend"
        raise MissingExtraError(what, "tflite", "ai_edge_litert") from err


def _layout(meta: dict[str, Any], shape: tuple[int, ...]) -> str:
    if meta.get("layout") in ("NCHW", "NHWC"):
        return str(meta["layout"])
    return "NHWC" if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3) else "NCHW"


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float input to the integer type of a quantized tensor (round to nearest, saturate)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


class LiteRtSession:
    def __init__(self, path: Path, meta: dict[str, Any], options: RuntimeOptions):
        if options.device != "cpu":
            msg = f"litert: device {options.device} is not supported by this backend; use device cpu"
            raise BackendError(msg)
        module, self.package, self.version = _interpreter_module()
        self.xnnpack = bool(options.settings.get("xnnpack", True))
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": options.threads}
        if not self.xnnpack and hasattr(module, "OpResolverType"):
            kwargs["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = module.Interpreter(**kwargs)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            msg = f"litert cannot load {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            raise BackendError(msg) from err
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.layout = _layout(meta, tuple(int(d) for d in self.input["shape"]))
        self.threads = options.threads

    def batch_sizes(self) -> tuple[int, ...] | None:
        return (int(self.input["shape"][0]),)

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = batch.transpose(0, 2, 3, 1) if self.layout == "NHWC" else batch
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind in "iu":
            scale, zero_point = self.input["quantization"]
            x = quantize(x, dtype, scale, zero_point)
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x, dtype=dtype))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if np.dtype(self.output["dtype"]).kind in "iu":
            scale, zero_point = self.output["quantization"]
            return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.package, "version": self.version,
                "provider": "xnnpack" if self.xnnpack else "builtin", "device": "cpu", "threads": self.threads,
                "layout": self.layout, "input_dtype": np.dtype(self.input["dtype"]).name}


class LiteRtBackend:
    name = "litert"

    def load(self, path: Path, meta: dict[str, Any], options: RuntimeOptions) -> LiteRtSession:
        return LiteRtSession(path, meta, options)
