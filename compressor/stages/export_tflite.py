"""``export_tflite``: a ``.tflite`` flatbuffer from the PyTorch model via litert-torch, verified against PyTorch.

FP32, or FP16 weights (litert-torch's ``full_fp16_recipe``: weights stored as FP16, computed in FP32);
NCHW input as in PyTorch, or NHWC for mobile consumers (``litert_torch.to_channel_last_io``). Class
names and preprocessing are embedded in the flatbuffer's metadata (see ``compressor.export.tflite_metadata``).
TensorFlow is never imported.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compressor.core.config import StageConfig
from compressor.core.context import StageContext, StageOutput
from compressor.export.agreement import verify_artifact
from compressor.export.tflite import convert_to_tflite, write_tflite
from compressor.metrics.classification import predict
from compressor.metrics.evaluation import task_of
from compressor.stages._shared import export_metadata, file_info, load_source_model


class ExportTfliteConfig(StageConfig):
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp16 stores weights as FP16.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Input layout of the file; NHWC suits mobile code.")
    batch_size: int = Field(1, ge=1, description="Batch of the file's input (TFLite files have a fixed batch).")
    verify_images: int = Field(256, ge=1, description="Validation images compared with PyTorch.")
    min_agreement: float | None = Field(
        None, ge=0, le=100, description="Minimum top-1 agreement with PyTorch, percent (default 99.9 fp32, 99 fp16).")
    xnnpack: bool = Field(True, description="Verify with the XNNPACK delegate (as the benchmark runs it).")


def run_export_tflite(cfg: ExportTfliteConfig, ctx: StageContext) -> StageOutput:
    source, model = load_source_model(ctx)
    images, _ = ctx.data.val_arrays(cfg.verify_images)
    example = torch.from_numpy(images[: cfg.batch_size])
    flatbuffer = convert_to_tflite(model, example, cfg.precision, cfg.layout)
    doc = file_info(ctx, cfg.layout, cfg.precision)
    path = ctx.out_dir / "model.tflite"
    write_tflite(path, flatbuffer, doc)
    meta = export_metadata(ctx, source, "tflite", cfg.precision, cfg.layout, batch_size=cfg.batch_size)
    reference = predict(model, images, torch.device("cpu"))
    metrics = verify_artifact("litert", path, meta, reference, images, cfg.min_agreement, ctx.threads,
                              {"xnnpack": cfg.xnnpack}, task=task_of(ctx))
    metrics.update(size_bytes=path.stat().st_size, layout=cfg.layout)
    return StageOutput(ctx.new_artifact("tflite", {"model": "model.tflite"}, meta), metrics)
