"""OpenVINO backend: CPU (GPU device when present), latency hint, threads and streams from the options.

Settings (``RuntimeOptions.settings``): ``hint`` (latency | throughput | none, default latency),
``streams`` (default 1), ``inference_precision`` (f32 | bf16 | f16 | default; default f32, so that
an FP32 or FP16 IR is run at the precision it was verified at rather than the bf16 OpenVINO picks on
CPUs with AVX512-BF16 or AMX), ``perf_counters`` (true: per-layer counters in ``request.profiling_info``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BackendError
from compressor.runtime.backends import RuntimeOptions
from compressor.runtime.portable import input_layout, to_layout

_DEVICES = {"cpu": "CPU", "gpu": "GPU", "cuda": "GPU"}


class OpenVinoSession:
    def __init__(self, path: Path, meta: dict[str, Any], options: RuntimeOptions):
        import openvino as ov

        core = ov.Core()
        device = _DEVICES.get(options.device.lower(), options.device.upper())
        if device not in core.available_devices:
            msg = (f"openvino: device {device} is not available (found: {', '.join(core.available_devices)}); "
                   "use device cpu")
            raise BackendError(msg)
        settings = options.settings
        hint = str(settings.get("hint", "latency")).upper()
        config: dict[str, Any] = {}
        if hint != "NONE":
            config["PERFORMANCE_HINT"] = hint
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = options.threads
        config["NUM_STREAMS"] = str(settings.get("streams", 1))
        precision = str(settings.get("inference_precision", "f32"))
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        if settings.get("perf_counters"):
            config["PERF_COUNT"] = True
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, device, config)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError with a long message
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            msg = f"openvino cannot load {path} on {device}: {first}"
            raise BackendError(msg) from err
        self.request = self.compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self.shape = [d.get_length() if d.is_static else None for d in shape]
        self.layout = input_layout(self.shape, meta.get("layout"))
        self.version = ov.get_version()
        self.device = device
        self.threads = options.threads
        self.config = {k: str(v) for k, v in config.items()}

    def batch_sizes(self) -> tuple[int, ...] | None:
        first = self.shape[0] if self.shape else None
        return (first,) if isinstance(first, int) else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = to_layout(batch, self.layout)
        # share_inputs: the request reads the caller's array in place (no 600 KB copy per 224 px image, a few
        # percent of a millisecond-scale call); the output is copied once, out of the request's buffer.
        self.request.infer([np.ascontiguousarray(x, dtype=np.float32)], share_inputs=True)
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def bind(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        """``batch`` set once as the input of a request of its own (shared, not copied); each call infers
        and copies the output out: what ``benchmark_app`` times."""
        import openvino as ov

        x = np.ascontiguousarray(to_layout(batch, self.layout), dtype=np.float32)
        request = self.compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))

        def call(keep: np.ndarray = x) -> np.ndarray:  # keep: the shared buffer lives as long as the call
            request.infer()
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

        return call

    def describe(self) -> dict[str, Any]:
        return {"runtime": "openvino", "version": self.version, "provider": self.device,
                "device": self.device.lower(), "threads": self.threads, "layout": self.layout,
                "config": self.config, "kernels": self.kernels()}

    def kernels(self) -> dict[str, Any]:
        """The oneDNN primitives the compiled model runs its convolutions and matmuls with, and their
        precision (``brgconv_avx512_amx_1x1_i8``: AMX int8): which ISA the kernels really used."""
        counts: dict[str, int] = {}
        try:
            for node in self.compiled.get_runtime_model().get_ordered_ops():
                info = node.get_rt_info()
                layer = str(info["layerType"].astype(str)) if "layerType" in info else ""
                if layer in ("Convolution", "FullyConnected", "MatMul", "Deconvolution"):
                    kernel = str(info["primitiveType"].astype(str)) if "primitiveType" in info else "?"
                    counts[kernel] = counts.get(kernel, 0) + 1
        except Exception:  # noqa: BLE001 - a device without a runtime graph (GPU) reports none
            return {}
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


class OpenVinoBackend:
    name = "openvino"

    def load(self, path: Path, meta: dict[str, Any], options: RuntimeOptions) -> OpenVinoSession:
        return OpenVinoSession(path, meta, options)
