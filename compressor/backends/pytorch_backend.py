"""PyTorch backend: the starting point, measured the same way as the exported artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.backends import RuntimeOptions
from compressor.models import load_model_artifact


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


class PyTorchBackend:
    name = "pytorch"

    def load(self, path: Path, meta: dict[str, Any], options: RuntimeOptions) -> PyTorchSession:
        return PyTorchSession(path, meta, options)
