"""``export_onnx``: one self-contained ONNX file, metadata inside, verified against PyTorch."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compressor.core.config import StageConfig
from compressor.core.context import StageContext, StageOutput
from compressor.export.agreement import check_agreement, run_batched
from compressor.export.onnx import export_to_onnx
from compressor.metrics.classification import predict
from compressor.metrics.evaluation import task_of
from compressor.stages._shared import export_metadata, file_metadata
from compressor.train.models import load_stage_model


class ExportOnnxConfig(StageConfig):
    opset: int = Field(18, ge=13, le=23, description="ONNX opset (the dynamo exporter supports 18 and later).")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.onnx exporter; torchscript handles NNCF fake-quant nodes.")
    dynamic_batch: bool = Field(True, description="Leave the batch dimension free; else fix it to batch_size.")
    batch_size: int = Field(1, ge=1, description="Batch of the example input (and of the file if not dynamic).")
    external_data: bool = Field(False, description="Write weights to a separate .data file (needed above 2 GB).")
    verify_images: int = Field(256, ge=1, description="Validation images compared with PyTorch.")
    min_agreement: float = Field(99.9, ge=0, le=100, description="Minimum top-1 agreement with PyTorch, percent.")


def run_export_onnx(cfg: ExportOnnxConfig, ctx: StageContext) -> StageOutput:
    from compressor.runtime.backends import RuntimeOptions, get_backend

    model = load_stage_model(ctx, ctx.input).cpu()
    images, _ = ctx.data.val_arrays(cfg.verify_images)
    example = torch.from_numpy(images[: cfg.batch_size])
    path = ctx.out_dir / "model.onnx"
    export_to_onnx(model, example, path, file_metadata(ctx), opset=cfg.opset, exporter=cfg.exporter,
                   dynamic_batch=cfg.dynamic_batch, external_data=cfg.external_data)

    session = get_backend("onnxruntime").load(path, {}, RuntimeOptions(threads=ctx.threads))
    reference = predict(model, images, torch.device("cpu"))
    candidate = run_batched(session.run, images, session.batch_sizes())
    metrics = check_agreement("onnx", "fp32", candidate, reference, cfg.min_agreement, task_of(ctx))
    files = {"model": path.name}
    if cfg.external_data:
        files["data"] = path.name + ".data"
    meta = export_metadata(ctx, ctx.input, "onnx", "fp32", "NCHW", opset=cfg.opset, exporter=cfg.exporter,
                           dynamic_batch=cfg.dynamic_batch)
    metrics.update(opset=cfg.opset, size_bytes=path.stat().st_size)
    return StageOutput(ctx.new_artifact("onnx", files, meta), metrics)
