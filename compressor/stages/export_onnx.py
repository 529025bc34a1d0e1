"""``export_onnx``: one self-contained ONNX file, metadata inside, verified against PyTorch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from compressor import __version__
from compressor.artifacts import atomic_write
from compressor.config import StageConfig
from compressor.context import StageContext, StageOutput, load_model
from compressor.converter_errors import failed_op, module_of_op
from compressor.errors import ExportError, MissingExtraError
from compressor.evaluation import task_of
from compressor.metrics import predict
from compressor.verify import check_agreement, run_batched


class ExportOnnxConfig(StageConfig):
    opset: int = Field(18, ge=13, le=23, description="ONNX opset (the dynamo exporter supports 18 and later).")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.onnx exporter; torchscript handles NNCF fake-quant nodes.")
    dynamic_batch: bool = Field(True, description="Leave the batch dimension free; else fix it to batch_size.")
    batch_size: int = Field(1, ge=1, description="Batch of the example input (and of the file if not dynamic).")
    external_data: bool = Field(False, description="Write weights to a separate .data file (needed above 2 GB).")
    verify_images: int = Field(256, ge=1, description="Validation images compared with PyTorch.")
    min_agreement: float = Field(99.9, ge=0, le=100, description="Minimum top-1 agreement with PyTorch, percent.")


def onnx_metadata(ctx: StageContext, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Metadata a consumer needs: class names and preprocessing (stored as ONNX metadata_props)."""
    data = ctx.data
    meta = {
        "class_names": json.dumps(data.classes),
        "preprocess": json.dumps(data.describe()["preprocess"]),
        "input_layout": "NCHW",
        "producer": f"compressor {__version__}",
    }
    if getattr(ctx.recipe, "task", "classification") == "embedding":
        emb = ctx.recipe.embedding
        meta["task"] = "embedding"
        meta["embedding"] = json.dumps({"normalized": emb.normalize, "distance": emb.distance})
    meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()})
    return meta


def export_to_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, cfg: ExportOnnxConfig,
                   metadata: dict[str, str]) -> None:
    output = "embedding" if metadata.get("task") == "embedding" else "logits"
    """Export, embed metadata and check the graph; errors name the format and the exporter's reason."""
    try:
        import onnx
    except ImportError as err:
        what = "ONNX export"
        raise MissingExtraError(what, "onnx", "onnx") from err

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if cfg.exporter == "dynamo":
                dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if cfg.dynamic_batch else None
                torch.onnx.export(model, (example,), str(tmp), dynamo=True, opset_version=cfg.opset,
                                  external_data=cfg.external_data, dynamic_shapes=dynamic,
                                  input_names=["input"], output_names=[output], verbose=False)
            else:
                axes = {"input": {0: "batch"}, output: {0: "batch"}} if cfg.dynamic_batch else None
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=cfg.opset,
                                  input_names=["input"], output_names=[output], dynamic_axes=axes)
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp), save_as_external_data=cfg.external_data,
                        location=path.name + ".data" if cfg.external_data else None)

    try:
        atomic_write(path, write)
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - exporters raise many types; report format and reason
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        op = failed_op(str(err))
        if op is not None:
            first = first.split(" Please feel free to request support")[0]  # torch.onnx's boilerplate
            where = module_of_op(model, example, op)
            first = (f"the exporter cannot handle operator aten::{op}{' in module ' + where if where else ''} "
                     f"({first.rstrip('.')})")
        msg = (f"onnx export failed ({cfg.exporter} exporter, opset {cfg.opset}): {first}. "
               f"Try exporter: {'torchscript' if cfg.exporter == 'dynamo' else 'dynamo'} or another opset")
        raise ExportError(msg) from err


def run_export_onnx(cfg: ExportOnnxConfig, ctx: StageContext) -> StageOutput:
    from compressor.backends import RuntimeOptions, get_backend

    model = load_model(ctx, ctx.input).cpu()
    images, _ = ctx.data.val_arrays(cfg.verify_images)
    example = torch.from_numpy(images[: cfg.batch_size])
    path = ctx.out_dir / "model.onnx"
    export_to_onnx(model, example, path, cfg, onnx_metadata(ctx))

    session = get_backend("onnxruntime").load(path, {}, RuntimeOptions(threads=ctx.threads))
    reference = predict(model, images, torch.device("cpu"))
    candidate = run_batched(session.run, images, session.batch_sizes())
    metrics = check_agreement("onnx", "fp32", candidate, reference, cfg.min_agreement, task_of(ctx))
    files = {"model": path.name}
    if cfg.external_data:
        files["data"] = path.name + ".data"
    meta = {
        "format": "onnx", "precision": "fp32", "opset": cfg.opset, "exporter": cfg.exporter,
        "dynamic_batch": cfg.dynamic_batch, "layout": "NCHW", "classes": ctx.data.classes,
        "preprocess": ctx.data.describe()["preprocess"], "source_model": ctx.input.model_dump(),
        "macs": ctx.input.meta.get("macs"), "params": ctx.input.meta.get("params"),
        "input_shape": ctx.input.meta.get("input_shape"),
    }
    metrics.update(opset=cfg.opset, size_bytes=path.stat().st_size)
    return StageOutput(ctx.new_artifact("onnx", files, meta), metrics)
