"""OpenVINO IR conversion as a library: ``openvino.convert_model`` from PyTorch or ONNX, atomic save."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from compressor.core.artifacts import atomic_write
from compressor.errors import MissingExtraError
from compressor.export.errors import converter_error


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
