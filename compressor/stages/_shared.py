"""Helpers the stages share: the PyTorch model behind an input, and the metadata every exported file and
artifact carries (class names, preprocessing, layout, provenance)."""

from __future__ import annotations

from typing import Any

from torch import nn

from compressor import __version__
from compressor.core.artifacts import Artifact
from compressor.core.context import StageContext
from compressor.errors import ExportError
from compressor.export.onnx import onnx_metadata
from compressor.train.models import load_model_artifact


def export_metadata(ctx: StageContext, source: Artifact, fmt: str, precision: str, layout: str,
                    **extra: Any) -> dict[str, Any]:
    """Artifact meta shared by the export and quantize stages; ``source`` is the PyTorch model artifact."""
    return {
        "format": fmt, "precision": precision, "layout": layout, "classes": ctx.data.classes,
        "preprocess": ctx.data.describe()["preprocess"], "source_model": source.model_dump(),
        "macs": source.meta.get("macs"), "params": source.meta.get("params"),
        "input_shape": source.meta.get("input_shape"), **extra,
    }


def source_model_of(ctx: StageContext) -> Artifact:
    """The PyTorch model artifact behind the stage's input (the input itself, or an export's source)."""
    if ctx.input.kind == "model":
        return ctx.input
    if not ctx.input.meta.get("source_model"):
        msg = f"input artifact of kind {ctx.input.kind} does not record the PyTorch model it came from"
        raise ExportError(msg)
    return Artifact.model_validate(ctx.input.meta["source_model"])


def load_source_model(ctx: StageContext, artifact: Artifact | None = None) -> tuple[Artifact, nn.Module]:
    """(model artifact, PyTorch model in eval mode on the CPU) behind ``artifact`` (default: the input)."""
    source = source_model_of(ctx) if artifact is None else (
        artifact if artifact.kind == "model" else Artifact.model_validate(artifact.meta["source_model"]))
    model = load_model_artifact(source.meta, source.path(ctx.cache_root, "weights")).cpu().eval()
    return source, model


def file_info(ctx: StageContext, layout: str, precision: str) -> dict[str, Any]:
    """What a consumer of an exported file needs, stored inside the file (OpenVINO rt_info, TFLite metadata)."""
    return {"class_names": ctx.data.classes, "preprocess": ctx.data.describe()["preprocess"],
            "input_layout": layout, "precision": precision, "producer": f"compressor {__version__}"}


def file_metadata(ctx: StageContext, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The ONNX ``metadata_props`` of the run's data and task."""
    return onnx_metadata(ctx.data.classes, ctx.data.describe()["preprocess"], ctx.task, extra)
