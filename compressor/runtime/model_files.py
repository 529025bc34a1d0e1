"""ONNX and OpenVINO IR files as a recipe's model source (``model: {onnx: FILE}`` / ``{openvino: FILE}``).

What the file says about itself is read from it: input shape and layout, output width, precision, and
(for files that carry them, like this tool's exports) class names and preprocessing. What it leaves open
(a dynamic height and width, the layout of an unnamed 3x3 input) comes from the recipe (``input_shape``,
``layout``); a contradiction between the file, the recipe and the data is an error naming both sides.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.core.artifacts import sha256_file
from compressor.core.config import ModelSource
from compressor.core.context import StageContext, StageOutput
from compressor.errors import MissingExtraError, ModelSourceError


@dataclass
class FileModel:
    """What one model file says about itself."""

    format: str
    files: list[Path]
    input_shape: list[int | None]  # NCHW or NHWC as stored, None for a dynamic dimension
    outputs: int | None
    precision: str
    layout: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # class_names, preprocess (when the file has them)


def _onnx_dims(value_info: Any) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def read_model_file(source: ModelSource) -> FileModel:
    """Inspect ``source.onnx`` or ``source.openvino`` (files checked, nothing loaded onto a device)."""
    path = source.file
    assert path is not None
    field_name = f"model.{source.kind}"
    if not path.is_file():
        msg = f"{field_name}: {path} does not exist"
        raise ModelSourceError(msg)
    if source.onnx is not None:
        try:
            import onnx
        except ImportError as err:
            raise MissingExtraError(field_name, "onnx", "onnx") from err
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # noqa: BLE001 - protobuf errors of a damaged file
            msg = f"{field_name}: {path} is not a readable ONNX file ({type(err).__name__}: {err})"
            raise ModelSourceError(msg) from err
        initializers = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in initializers]
        if len(inputs) != 1 or not model.graph.output:
            msg = f"{field_name}: {path} has {len(inputs)} inputs; an image classifier file has one image input"
            raise ModelSourceError(msg)
        meta: dict[str, Any] = {}
        for prop in model.metadata_props:
            if prop.key in ("class_names", "preprocess"):
                meta[prop.key] = json.loads(prop.value)
        ops = {n.op_type for n in model.graph.node}
        int8 = {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
        out = _onnx_dims(model.graph.output[0])
        external = [path.parent / ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)]
        return FileModel("onnx", [path, *sorted(set(external))], _onnx_dims(inputs[0]), out[-1] if out else None,
                         "int8" if ops & int8 else "fp32", None, meta)
    try:
        import openvino as ov
    except ImportError as err:
        raise MissingExtraError(field_name, "openvino", "openvino") from err
    weights = path.with_suffix(".bin")
    if path.suffix != ".xml" or not weights.is_file():
        msg = f"{field_name}: an OpenVINO IR is an .xml file with its .bin beside it ({weights} not found)"
        raise ModelSourceError(msg)
    try:
        ov_model = ov.Core().read_model(str(path))
    except Exception as err:  # noqa: BLE001
        msg = f"{field_name}: {path} is not a readable OpenVINO IR ({type(err).__name__}: {err})"
        raise ModelSourceError(msg) from err
    if len(ov_model.inputs) != 1:
        msg = f"{field_name}: {path} has {len(ov_model.inputs)} inputs; an image classifier file has one image input"
        raise ModelSourceError(msg)
    shape = [d.get_length() if d.is_static else None for d in ov_model.inputs[0].get_partial_shape()]
    out_shape = ov_model.outputs[0].get_partial_shape()
    outputs = out_shape[out_shape.rank.get_length() - 1].get_length() if out_shape.rank.is_static and out_shape[
        out_shape.rank.get_length() - 1].is_static else None
    meta, layout = {}, None
    if ov_model.has_rt_info(["compressor", "class_names"]):
        meta["class_names"] = json.loads(str(ov_model.get_rt_info(["compressor", "class_names"])))
    if ov_model.has_rt_info(["compressor", "preprocess"]):
        meta["preprocess"] = json.loads(str(ov_model.get_rt_info(["compressor", "preprocess"])))
    if ov_model.has_rt_info(["compressor", "input_layout"]):
        layout = str(ov_model.get_rt_info(["compressor", "input_layout"])).strip('"')
    text = path.read_text(errors="replace")
    quantized = "FakeQuantize" in text or 'element_type="i8"' in text or 'element_type="u8"' in text
    return FileModel("openvino", [path, weights], shape, outputs, "int8" if quantized else "fp32", layout, meta)


def file_preprocess(source: ModelSource) -> dict[str, Any] | None:
    """The preprocessing a model file carries (None when it has none, or cannot be read yet)."""
    try:
        return read_model_file(source).metadata.get("preprocess")
    except Exception:  # noqa: BLE001 - the source stage reports an unreadable file with its cause
        return None


def _layout(source: ModelSource, info: FileModel) -> str:
    if source.layout is not None:
        return source.layout
    if info.layout in ("NCHW", "NHWC"):
        return info.layout
    dims = info.input_shape
    if len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


def resolve_input(source: ModelSource, info: FileModel, data_shape: tuple[int, ...]) -> tuple[list[int], str]:
    """(C, H, W) of one image and the layout; the file, ``model.input_shape`` and the data must agree."""
    label = f"model.{source.kind}"
    if len(info.input_shape) != 4:
        msg = f"{label}: the file's input has rank {len(info.input_shape)}; an image input is N, C, H, W (or N, H, W, C)"
        raise ModelSourceError(msg)
    layout = _layout(source, info)
    c, h, w = (info.input_shape[1:] if layout == "NCHW" else
               [info.input_shape[3], info.input_shape[1], info.input_shape[2]])
    given = list(source.input_shape) if source.input_shape is not None else None
    file_chw = [c, h, w]
    if given is not None:
        for name, mine, theirs in zip("CHW", file_chw, given, strict=True):
            if mine is not None and mine != theirs:
                msg = f"model.input_shape {given} contradicts the file's input ({name} = {mine}, layout {layout})"
                raise ModelSourceError(msg)
        chw = given
    elif None in file_chw:
        msg = (f"{label}: the file leaves its input size open ({layout} {info.input_shape}); give model.input_shape "
               "[C, H, W]")
        raise ModelSourceError(msg)
    else:
        chw = [int(x) for x in file_chw if x is not None]
    if list(data_shape) != chw:
        msg = (f"{label}: the file takes {chw[0]}x{chw[1]}x{chw[2]} (C x H x W) images but data.preprocess makes "
               f"{'x'.join(str(d) for d in data_shape)}; set data.preprocess (channels, resize, crop) to match")
        raise ModelSourceError(msg)
    return chw, layout


def import_model_file(ctx: StageContext, source: ModelSource) -> StageOutput:
    """The recipe's ``model`` stage for a file source: the file copied into the cache, described by its meta."""
    info = read_model_file(source)
    shape, layout = resolve_input(source, info, tuple(ctx.data.input_shape))
    classes = list(ctx.data.classes)
    if info.outputs is not None and info.outputs != len(classes):
        msg = (f"model.{source.kind}: the file outputs {info.outputs} scores but the data has {len(classes)} classes; "
               "use data with the file's classes")
        raise ModelSourceError(msg)
    named = info.metadata.get("class_names")
    if named is not None and list(named) != classes:
        msg = (f"model.{source.kind}: the file's class names {named[:5]}... differ from the data's {classes[:5]}...; "
               "class folders must match the classes the file was trained on, in order")
        raise ModelSourceError(msg)
    main = info.files[0]
    names = {"model": "model.onnx"} if info.format == "onnx" else {"xml": "model.xml", "bin": "model.bin"}
    if info.format == "onnx":
        shutil.copyfile(main, ctx.out_dir / "model.onnx")
        for extra in info.files[1:]:  # external data keeps its relative name
            rel = extra.relative_to(main.parent)
            (ctx.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(extra, ctx.out_dir / rel)
            names[f"data:{rel}"] = str(rel)
    else:
        shutil.copyfile(main, ctx.out_dir / "model.xml")
        shutil.copyfile(info.files[1], ctx.out_dir / "model.bin")
    origin = {"file": str(main), "sha256": sha256_file(main), "format": info.format}
    meta = {"format": info.format, "precision": info.precision, "layout": layout, "classes": classes,
            "preprocess": ctx.data.describe()["preprocess"], "input_shape": shape, "macs": None, "params": None,
            "origin": origin}
    ctx.log(f"model: {info.format} file {main} ({info.precision}, {layout} {shape}, {len(classes)} classes)")
    return StageOutput(ctx.new_artifact(info.format, names, meta), {"file": origin})
