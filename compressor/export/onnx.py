"""ONNX export as a library: one self-contained file with metadata inside, errors naming the operator."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from compressor import __version__
from compressor.core.artifacts import atomic_write
from compressor.core.context import TaskSpec
from compressor.errors import ExportError, MissingExtraError
from compressor.export.errors import failed_op, module_of_op


def onnx_metadata(classes: list[str], preprocess: dict[str, Any], task: TaskSpec,
                  extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Metadata a consumer needs: class names and preprocessing (stored as ONNX metadata_props)."""
    meta = {
        "class_names": json.dumps(classes),
        "preprocess": json.dumps(preprocess),
        "input_layout": "NCHW",
        "producer": f"compressor {__version__}",
    }
    emb = task.embedding
    if task.is_embedding and emb is not None:
        meta["task"] = "embedding"
        meta["embedding"] = json.dumps({"normalized": emb.normalize, "distance": emb.distance})
    meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()})
    return meta


def export_to_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str], *,
                   opset: int = 18, exporter: str = "dynamo", dynamic_batch: bool = True,
                   external_data: bool = False) -> None:
    """Export, embed metadata and check the graph; errors name the format and the exporter's reason."""
    output = "embedding" if metadata.get("task") == "embedding" else "logits"
    try:
        import onnx
    except ImportError as err:
        what = "ONNX export"
        raise MissingExtraError(what, "onnx", "onnx") from err

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
                torch.onnx.export(model, (example,), str(tmp), dynamo=True, opset_version=opset,
                                  external_data=external_data, dynamic_shapes=dynamic,
                                  input_names=["input"], output_names=[output], verbose=False)
            else:
                axes = {"input": {0: "batch"}, output: {0: "batch"}} if dynamic_batch else None
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=[output], dynamic_axes=axes)
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp), save_as_external_data=external_data,
                        location=path.name + ".data" if external_data else None)

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
        msg = (f"onnx export failed ({exporter} exporter, opset {opset}): {first}. "
               f"Try exporter: {'torchscript' if exporter == 'dynamo' else 'dynamo'} or another opset")
        raise ExportError(msg) from err
