"""``export_openvino``: OpenVINO IR (``model.xml`` + ``model.bin``), FP32 or FP16 weights, verified against PyTorch.

The IR is converted from the PyTorch model (``openvino.convert_model`` with an example input) or from an
ONNX artifact (``source: onnx`` with ``input`` naming an ``export_onnx`` stage). Class names and
preprocessing go into the IR's runtime info under ``compressor``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from compressor import __version__
from compressor.artifacts import Artifact, atomic_write
from compressor.config import StageConfig
from compressor.context import StageContext, StageOutput
from compressor.converter_errors import converter_error
from compressor.errors import ExportError, MissingExtraError
from compressor.evaluation import task_of
from compressor.metrics import predict
from compressor.models import load_model_artifact
from compressor.verify import verify_artifact


class ExportOpenVinoConfig(StageConfig):
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp16 stores weights as FP16 (compress_to_fp16).")
    source: Literal["auto", "pytorch", "onnx"] = Field(
        "auto", description="Convert from the PyTorch model or the ONNX file; auto follows the input's kind.")
    dynamic_batch: bool = Field(True, description="Leave the batch dimension free (PyTorch source).")
    batch_size: int = Field(1, ge=1, description="Batch of the example input (and of the IR if not dynamic).")
    verify_images: int = Field(256, ge=1, description="Validation images compared with PyTorch.")
    min_agreement: float | None = Field(
        None, ge=0, le=100, description="Minimum top-1 agreement with PyTorch, percent (default 99.9 fp32, 99 fp16).")


def export_metadata(ctx: StageContext, source: Artifact, fmt: str, precision: str, layout: str,
                    **extra: Any) -> dict[str, Any]:
    """Artifact meta shared by the export stages; ``source`` is the PyTorch model artifact."""
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
    if "source_model" not in ctx.input.meta:
        msg = f"input artifact of kind {ctx.input.kind} does not record the PyTorch model it came from"
        raise ExportError(msg)
    return Artifact.model_validate(ctx.input.meta["source_model"])


def convert_to_openvino(source: torch.nn.Module | Path, example: torch.Tensor, dynamic_batch: bool) -> Any:
    """An ``openvino.Model`` from a PyTorch module (traced with ``example``) or an ONNX file."""
    try:
        import openvino as ov
    except ImportError as err:
        what = "OpenVINO export"
        raise MissingExtraError(what, "openvino", "openvino") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(source, Path):
                return ov.convert_model(str(source))
            shape = [-1 if dynamic_batch else example.shape[0], *example.shape[1:]]
            return ov.convert_model(source, example_input=example, input=[ov.PartialShape(shape)])
    except Exception as err:  # noqa: BLE001 - the frontends raise several types
        model = None if isinstance(source, Path) else source
        fmt = "openvino"
        raise converter_error(fmt, err, model, example, hint="try source: onnx" if model is not None else "") from err


def save_openvino(model: Any, xml: Path, precision: str, info: dict[str, str]) -> None:
    """Write ``xml`` + ``.bin`` with ``info`` in the runtime info; both files are renamed into place."""
    import openvino as ov

    for key, value in info.items():
        model.set_rt_info(value, ["compressor", key])
    tmp_xml = xml.with_name(f".{xml.stem}.tmp.xml")
    ov.save_model(model, str(tmp_xml), compress_to_fp16=precision == "fp16")
    tmp_bin = tmp_xml.with_suffix(".bin")
    # Rename the weights first: an .xml in place always has its .bin.
    atomic_write(xml.with_suffix(".bin"), lambda tmp: tmp_bin.replace(tmp))
    atomic_write(xml, lambda tmp: tmp_xml.replace(tmp))


def run_export_openvino(cfg: ExportOpenVinoConfig, ctx: StageContext) -> StageOutput:
    source_kind = cfg.source if cfg.source != "auto" else ("onnx" if ctx.input.kind == "onnx" else "pytorch")
    if source_kind == "onnx" and ctx.input.kind != "onnx":
        msg = f"source: onnx needs 'input' to name an export_onnx stage (its input is a {ctx.input.kind} artifact)"
        raise ExportError(msg)
    source = source_model_of(ctx)
    model = load_model_artifact(source.meta, source.path(ctx.cache_root, "weights")).cpu().eval()
    images, _ = ctx.data.val_arrays(cfg.verify_images)
    example = torch.from_numpy(images[: cfg.batch_size])
    ov_model = convert_to_openvino(ctx.input.path(ctx.cache_root) if source_kind == "onnx" else model,
                                   example, cfg.dynamic_batch)
    info = {
        "class_names": json.dumps(ctx.data.classes), "preprocess": json.dumps(ctx.data.describe()["preprocess"]),
        "input_layout": "NCHW", "precision": cfg.precision, "producer": f"compressor {__version__}",
    }
    xml = ctx.out_dir / "model.xml"
    save_openvino(ov_model, xml, cfg.precision, info)
    meta = export_metadata(ctx, source, "openvino", cfg.precision, "NCHW", converted_from=source_kind)
    reference = predict(model, images, torch.device("cpu"))
    metrics = verify_artifact("openvino", xml, meta, reference, images, cfg.min_agreement, ctx.threads,
                              task=task_of(ctx))
    metrics.update(size_bytes=xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
                   converted_from=source_kind)
    return StageOutput(ctx.new_artifact("openvino", {"xml": "model.xml", "bin": "model.bin"}, meta), metrics)
