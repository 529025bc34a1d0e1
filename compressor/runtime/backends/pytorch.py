"""PyTorch backend: the starting point, measured the same way as the exported artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.errors import BackendError
from compressor.runtime.backends import RuntimeOptions
from compressor.train.models import load_model_artifact


class PyTorchSession:
    def __init__(self, path: Path, meta: dict[str, Any], options: RuntimeOptions):
        self.device = torch.device(options.device)
        self.model = load_model_artifact(meta, path).to(self.device).eval()
        self.threads = options.threads

    def batch_sizes(self) -> tuple[int, ...] | None:
        return None

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        # Threads are process-wide in PyTorch; set per call so other sessions cannot change them.
        torch.set_num_threads(self.threads)
        out = self.model(torch.from_numpy(batch).to(self.device))
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"runtime": "pytorch", "version": torch.__version__, "provider": "eager",
                "device": self.device.type, "threads": self.threads, "layout": "NCHW"}


class PyTorchCompileSession(PyTorchSession):
    """The model under ``torch.compile``.

    Settings: ``mode`` (default, reduce-overhead, max-autotune) and ``compiler`` (the ``torch.compile``
    backend: inductor by default; eager or aot_eager check the graph capture without code generation).
    Compilation happens on the first batch of each shape, so a benchmark's warm-up absorbs it; a
    failure there is a :class:`BackendError` naming the compiler's reason.
    """

    def __init__(self, path: Path, meta: dict[str, Any], options: RuntimeOptions):
        super().__init__(path, meta, options)
        self.mode = str(options.settings.get("mode", "default"))
        self.compiler = str(options.settings.get("compiler", "inductor"))
        mode = None if self.mode == "default" or self.compiler != "inductor" else self.mode
        self.compiled = torch.compile(self.model, backend=self.compiler, mode=mode, dynamic=False)

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        torch.set_num_threads(self.threads)
        try:
            out = self.compiled(torch.from_numpy(batch).to(self.device))
        except Exception as err:  # noqa: BLE001 - dynamo and inductor raise many types
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            msg = f"torch.compile failed on this model ({type(err).__name__}: {first}); use backend pytorch"
            raise BackendError(msg) from err
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "provider": f"torch.compile ({self.compiler}, {self.mode})"}


class PyTorchBackend:
    name = "pytorch"

    def load(self, path: Path, meta: dict[str, Any], options: RuntimeOptions) -> PyTorchSession:
        return PyTorchSession(path, meta, options)


class PyTorchCompileBackend:
    name = "pytorch-compile"

    def load(self, path: Path, meta: dict[str, Any], options: RuntimeOptions) -> PyTorchCompileSession:
        return PyTorchCompileSession(path, meta, options)
