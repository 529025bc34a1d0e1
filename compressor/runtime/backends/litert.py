"""LiteRT backend: the TFLite interpreter of ``ai-edge-litert`` (XNNPACK delegate on by default).

Falls back to ``tflite_runtime.interpreter`` where only that older package exists. Settings:
``xnnpack`` (bool, default True). The session adapts NCHW float32 batches to the file's input: NHWC
layout, and int8/uint8 tensors quantized with the file's own scale and zero point (outputs dequantized).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BackendError, MissingExtraError
from compressor.runtime.backends import RuntimeOptions
from compressor.runtime.portable import dequantize, input_layout, quantize, to_layout

__all__ = ["LiteRtBackend", "LiteRtSession", "quantize"]


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
        self.layout = input_layout([int(d) for d in self.input["shape"]], meta.get("layout"))
        self.threads = options.threads

    def batch_sizes(self) -> tuple[int, ...] | None:
        return (int(self.input["shape"][0]),)

    def _set_input(self, batch: np.ndarray) -> None:
        x = to_layout(batch, self.layout)
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind in "iu":
            scale, zero_point = self.input["quantization"]
            x = quantize(x, dtype, scale, zero_point)
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x, dtype=dtype))

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._set_input(batch)
        return self._invoke()

    def bind(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        """``batch`` quantized and set once (until the next ``run`` or ``bind``); each call invokes and reads
        the output: what TFLite's ``benchmark_model`` times."""
        self._set_input(batch)
        return self._invoke

    def _invoke(self) -> np.ndarray:
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if np.dtype(self.output["dtype"]).kind in "iu":
            scale, zero_point = self.output["quantization"]
            return dequantize(out, scale, zero_point)
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.package, "version": self.version,
                "provider": "xnnpack" if self.xnnpack else "builtin", "device": "cpu", "threads": self.threads,
                "layout": self.layout, "input_dtype": np.dtype(self.input["dtype"]).name,
                "kernels": self.kernels()}

    def kernels(self) -> dict[str, Any]:
        """Whether XNNPACK took the graph: its partitions and the operators left to the builtin kernels."""
        try:
            ops = self.interpreter._get_ops_details()  # noqa: SLF001 - the only listing of the execution plan
        except Exception:  # noqa: BLE001 - older interpreters (tflite_runtime) lack it
            return {}
        delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
        outputs = {int(o["index"]) for o in self.interpreter.get_output_details()}
        covered = {int(t) for d in delegates for t in d["outputs"]}
        return {"xnnpack_partitions": len(delegates), "ops": len(ops) - len(delegates),
                "whole_graph_delegated": len(delegates) == 1 and outputs <= covered}


class LiteRtBackend:
    name = "litert"

    def load(self, path: Path, meta: dict[str, Any], options: RuntimeOptions) -> LiteRtSession:
        return LiteRtSession(path, meta, options)
