"""Runtime backends behind one small interface, looked up by name in one registry.

A backend loads an artifact file and runs preprocessed NCHW float32 batches, returning logits as
float32; it adapts layout and dtype to what the file wants. Backend modules import their runtime
lazily, so a missing optional runtime is a typed error naming the pip extra.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from compressor.errors import BackendError, MissingExtraError, did_you_mean


@dataclass(frozen=True)
class RuntimeOptions:
    """How a backend should run: threads, device, and backend-specific settings."""

    threads: int = 1
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)


class Session(Protocol):
    """A loaded artifact, ready to run."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 batch in, float32 logits out."""

    def batch_sizes(self) -> tuple[int, ...] | None:
        """Batch sizes the file accepts (None: any)."""

    def describe(self) -> dict[str, Any]:
        """Runtime name and version, device or execution provider, thread settings."""


def timed_call(session: Session, batch: np.ndarray) -> Callable[[], np.ndarray]:
    """What a latency measurement calls: the session's ``bind(batch)`` where it has one (the input set once,
    in the file's layout and type, as OpenVINO's ``benchmark_app`` and TFLite's ``benchmark_model`` time a
    model: each call is the inference and the output read), else ``session.run(batch)``."""
    bind = getattr(session, "bind", None)
    if bind is not None:
        return bind(batch)  # type: ignore[no-any-return]
    return lambda: session.run(batch)


class Backend(Protocol):
    name: str

    def load(self, path: Path, meta: dict[str, Any], options: RuntimeOptions) -> Session: ...


@dataclass(frozen=True)
class BackendEntry:
    """Capabilities as data: the formats a backend runs, the module it needs, the extra that brings it."""

    name: str
    formats: tuple[str, ...]
    target: str  # "module:Class"
    requires: str  # importable module name; "a|b" when either will do
    extra: str
    devices: tuple[str, ...] = ("cpu",)


# Read-only: pass another table to get_backend / available_backends instead of changing this one.
BACKENDS: Mapping[str, BackendEntry] = MappingProxyType({
    e.name: e for e in (
        BackendEntry("onnxruntime", ("onnx",), "compressor.runtime.backends.onnxruntime:OnnxRuntimeBackend",
                     "onnxruntime", "onnx", ("cpu", "cuda")),
        BackendEntry("openvino", ("openvino",), "compressor.runtime.backends.openvino:OpenVinoBackend",
                     "openvino", "openvino", ("cpu", "gpu")),
        BackendEntry("litert", ("tflite",), "compressor.runtime.backends.litert:LiteRtBackend",
                     "ai_edge_litert|tflite_runtime", "tflite", ("cpu",)),
        BackendEntry("pytorch", ("model",), "compressor.runtime.backends.pytorch:PyTorchBackend",
                     "torch", "all", ("cpu", "cuda")),
        BackendEntry("pytorch-compile", ("model",), "compressor.runtime.backends.pytorch:PyTorchCompileBackend",
                     "torch", "all", ("cpu", "cuda")),
    )
})

# The backend a format uses when a benchmark names none.
DEFAULT_BACKEND = {"onnx": "onnxruntime", "model": "pytorch", "openvino": "openvino", "tflite": "litert"}


def installed(entry: BackendEntry) -> bool:
    """Whether one of the entry's alternative modules ("a|b") can be imported."""
    return any(importlib.util.find_spec(name) is not None for name in entry.requires.split("|"))


def get_backend(name: str, backends: Mapping[str, BackendEntry] = BACKENDS) -> Backend:
    entry = backends.get(name)
    if entry is None:
        msg = f'unknown backend "{name}"{did_you_mean(name, backends)}; known backends: {", ".join(backends)}'
        raise BackendError(msg)
    if not installed(entry):
        what = f"the {name} backend"
        raise MissingExtraError(what, entry.extra, entry.requires.split("|")[0])
    module_name, _, cls_name = entry.target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: Backend = cls()
    return backend


def available_backends(backends: Mapping[str, BackendEntry] = BACKENDS) -> list[str]:
    return [name for name, e in backends.items() if installed(e)]
