"""``export_tflite``: a ``.tflite`` flatbuffer from the PyTorch model via litert-torch, verified against PyTorch.

FP32, or FP16 weights (litert-torch's ``full_fp16_recipe``: weights stored as FP16, computed in FP32);
NCHW input as in PyTorch, or NHWC for mobile consumers (``litert_torch.to_channel_last_io``). Class
names and preprocessing are embedded in the flatbuffer's metadata (see ``compressor.tflite_metadata``).
TensorFlow is never imported.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from compressor import __version__
from compressor.artifacts import atomic_write
from compressor.config import StageConfig
from compressor.context import StageContext, StageOutput
from compressor.converter_errors import converter_error
from compressor.errors import MissingExtraError
from compressor.evaluation import task_of
from compressor.metrics import predict
from compressor.models import load_model_artifact
from compressor.stages.export_openvino import export_metadata, source_model_of
from compressor.tflite_metadata import embed_metadata
from compressor.verify import verify_artifact


class ExportTfliteConfig(StageConfig):
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp16 stores weights as FP16.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Input layout of the file; NHWC suits mobile code.")
    batch_size: int = Field(1, ge=1, description="Batch of the file's input (TFLite files have a fixed batch).")
    verify_images: int = Field(256, ge=1, description="Validation images compared with PyTorch.")
    min_agreement: float | None = Field(
        None, ge=0, le=100, description="Minimum top-1 agreement with PyTorch, percent (default 99.9 fp32, 99 fp16).")
    xnnpack: bool = Field(True, description="Verify with the XNNPACK delegate (as the benchmark runs it).")


@contextlib.contextmanager
def _quiet_litert() -> Iterator[None]:
    """Turn litert-torch's progress printing off for the conversion only, then restore it."""
    import litert_torch

    before = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    try:
        # ai-edge-quantizer prints size summaries to stdout, which belongs to the CLI's report.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        litert_torch.config.show_progress = before


def convert_to_tflite(model: torch.nn.Module, example: torch.Tensor, precision: str, layout: str) -> bytes:
    """The flatbuffer of ``model`` traced with the NCHW ``example``; errors name format, operator and module."""
    try:
        import litert_torch
        from litert_torch.generative.quantize import quant_recipes
    except ImportError as err:
        what = "TFLite export"
        raise MissingExtraError(what, "tflite", "litert_torch") from err
    module, sample = model, example
    if layout == "NHWC":
        module = litert_torch.to_channel_last_io(model, args=[0])
        sample = example.permute(0, 2, 3, 1).contiguous()
    quant = quant_recipes.full_fp16_recipe() if precision == "fp16" else None
    try:
        with _quiet_litert():
            edge = litert_torch.convert(module.eval(), (sample,), quant_config=quant)
            return bytes(edge.model_content())
    except Exception as err:  # noqa: BLE001 - lowering errors come as RuntimeError, ValueError, ...
        fmt = "tflite"
        raise converter_error(fmt, err, model, example) from err


def write_tflite(path: Path, flatbuffer: bytes, doc: dict[str, Any]) -> None:
    content = embed_metadata(flatbuffer, doc)
    atomic_write(path, lambda tmp: tmp.write_bytes(content))


def run_export_tflite(cfg: ExportTfliteConfig, ctx: StageContext) -> StageOutput:
    source = source_model_of(ctx)
    model = load_model_artifact(source.meta, source.path(ctx.cache_root, "weights")).cpu().eval()
    images, _ = ctx.data.val_arrays(cfg.verify_images)
    example = torch.from_numpy(images[: cfg.batch_size])
    flatbuffer = convert_to_tflite(model, example, cfg.precision, cfg.layout)
    doc = {"class_names": ctx.data.classes, "preprocess": ctx.data.describe()["preprocess"],
           "input_layout": cfg.layout, "precision": cfg.precision, "producer": f"compressor {__version__}"}
    path = ctx.out_dir / "model.tflite"
    write_tflite(path, flatbuffer, doc)
    meta = export_metadata(ctx, source, "tflite", cfg.precision, cfg.layout, batch_size=cfg.batch_size)
    reference = predict(model, images, torch.device("cpu"))
    metrics = verify_artifact("litert", path, meta, reference, images, cfg.min_agreement, ctx.threads,
                              {"xnnpack": cfg.xnnpack}, task=task_of(ctx))
    metrics.update(size_bytes=path.stat().st_size, layout=cfg.layout)
    return StageOutput(ctx.new_artifact("tflite", {"model": "model.tflite"}, meta), metrics)
