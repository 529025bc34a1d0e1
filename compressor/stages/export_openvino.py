"""``export_openvino``: OpenVINO IR (``model.xml`` + ``model.bin``), FP32 or FP16 weights, verified against PyTorch.

The IR is converted from the PyTorch model (``openvino.convert_model`` with an example input) or from an
ONNX artifact (``source: onnx`` with ``input`` naming an ``export_onnx`` stage). Class names and
preprocessing go into the IR's runtime info under ``compressor``.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from compressor.core.config import StageConfig
from compressor.core.context import StageContext, StageOutput
from compressor.errors import ExportError
from compressor.export.agreement import run_batched, verify_artifact
from compressor.export.openvino import convert_to_openvino, save_openvino
from compressor.metrics.classification import predict
from compressor.metrics.evaluation import task_of
from compressor.runtime.backends import RuntimeOptions, get_backend
from compressor.stages._shared import export_metadata, file_info, load_source_model


class ExportOpenVinoConfig(StageConfig):
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp16 stores weights as FP16 (compress_to_fp16).")
    source: Literal["auto", "pytorch", "onnx"] = Field(
        "auto", description="Convert from the PyTorch model or the ONNX file; auto follows the input's kind.")
    dynamic_batch: bool = Field(True, description="Leave the batch dimension free (PyTorch source).")
    batch_size: int = Field(1, ge=1, description="Batch of the example input (and of the IR if not dynamic).")
    verify_images: int = Field(256, ge=1, description="Validation images compared with PyTorch.")
    min_agreement: float | None = Field(
        None, ge=0, le=100, description="Minimum top-1 agreement with PyTorch, percent (default 99.9 fp32, 99 fp16).")


def _onnx_reference(ctx: StageContext, images: np.ndarray) -> np.ndarray:
    """Outputs of the input ONNX file in ONNX Runtime: what the IR must agree with."""
    art = ctx.input
    session = get_backend("onnxruntime").load(art.path(ctx.cache_root, "model"), art.meta,
                                              RuntimeOptions(threads=ctx.threads))
    return run_batched(session.run, images, session.batch_sizes())


def run_export_openvino(cfg: ExportOpenVinoConfig, ctx: StageContext) -> StageOutput:
    source_kind = cfg.source if cfg.source != "auto" else ("onnx" if ctx.input.kind == "onnx" else "pytorch")
    if source_kind == "onnx" and ctx.input.kind != "onnx":
        msg = f"source: onnx needs 'input' to name an export_onnx stage (its input is a {ctx.input.kind} artifact)"
        raise ExportError(msg)
    images, _ = ctx.data.val_arrays(cfg.verify_images)
    example = torch.from_numpy(images[: cfg.batch_size])
    info = {k: json.dumps(v) if not isinstance(v, str) else v
            for k, v in file_info(ctx, "NCHW", cfg.precision).items()}
    xml = ctx.out_dir / "model.xml"
    if source_kind == "onnx" and not ctx.input.meta.get("source_model"):
        # an ONNX file someone else made (model: {onnx: FILE}): the reference is that file in ONNX Runtime
        ov_model = convert_to_openvino(ctx.input.path(ctx.cache_root), example, cfg.dynamic_batch)
        save_openvino(ov_model, xml, cfg.precision, info)
        reference = _onnx_reference(ctx, images)
        meta = {**{k: ctx.input.meta.get(k) for k in ("classes", "preprocess", "input_shape", "macs", "params",
                                                      "origin")},
                "format": "openvino", "precision": cfg.precision, "layout": "NCHW", "converted_from": source_kind}
    else:
        source, model = load_source_model(ctx)
        ov_model = convert_to_openvino(ctx.input.path(ctx.cache_root) if source_kind == "onnx" else model,
                                       example, cfg.dynamic_batch)
        save_openvino(ov_model, xml, cfg.precision, info)
        meta = export_metadata(ctx, source, "openvino", cfg.precision, "NCHW", converted_from=source_kind)
        reference = predict(model, images, torch.device("cpu"))
    metrics = verify_artifact("openvino", xml, meta, reference, images, cfg.min_agreement, ctx.threads,
                              task=task_of(ctx))
    metrics.update(size_bytes=xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
                   converted_from=source_kind)
    return StageOutput(ctx.new_artifact("openvino", {"xml": "model.xml", "bin": "model.bin"}, meta), metrics)
