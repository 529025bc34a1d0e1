"""What a result was measured on: CPU model and features, versions, threads."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

from compressor.runtime.portable import ISA_CAPS, cpu_info

__all__ = ["ISA_CAPS", "cpu_info", "environment", "package_versions"]

PACKAGES = (
    "compressor", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf",
    "torch-pruning", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "tflite-runtime", "pydantic",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def environment(threads: int | None = None) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "threads": threads,
        "packages": package_versions(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return env
