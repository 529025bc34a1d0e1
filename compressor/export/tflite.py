"""TFLite conversion as a library: litert-torch (never TensorFlow), FP32 or FP16 weights, NCHW or NHWC
input, metadata embedded in the flatbuffer."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from compressor.core.artifacts import atomic_write
from compressor.errors import MissingExtraError
from compressor.export.errors import converter_error
from compressor.export.tflite_metadata import embed_metadata


@contextlib.contextmanager
def quiet_litert() -> Iterator[None]:
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
        with quiet_litert():
            edge = litert_torch.convert(module.eval(), (sample,), quant_config=quant)
            return bytes(edge.model_content())
    except Exception as err:  # noqa: BLE001 - lowering errors come as RuntimeError, ValueError, ...
        fmt = "tflite"
        raise converter_error(fmt, err, model, example) from err


def write_tflite(path: Path, flatbuffer: bytes, doc: dict[str, Any]) -> None:
    content = embed_metadata(flatbuffer, doc)
    atomic_write(path, lambda tmp: tmp.write_bytes(content))
