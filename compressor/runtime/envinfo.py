"""What a result was measured on: CPU model and features, versions, threads."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

# Features that decide INT8 and FP16 speed: x86 flag names and ARM hwcaps as /proc/cpuinfo spells them.
_FEATURES = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16", "amx_tile": "amx_tile", "amx_int8": "amx_int8", "f16c": "f16c",
    "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "fphp": "fp16", "bf16": "bf16",
}
PACKAGES = (
    "compressor", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf",
    "torch-pruning", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "tflite-runtime", "pydantic",
)


# Environment variables that cap the instruction set a runtime dispatches to (oneDNN inside OpenVINO
# reads ONEDNN_MAX_CPU_ISA, e.g. AVX2 to measure a CPU without VNNI on one that has it).
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    features = sorted({name for flag, name in _FEATURES.items() if flag in flags})
    int8 = "vnni/dotprod" if {"avx512_vnni", "avx_vnni", "dotprod", "amx_int8"} & set(features) else "no int8 dot-product"
    return {
        "arch": platform.machine(),
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "features": features,
        "int8_dot_product": int8,
        "isa_caps": {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)},
    }


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
