"""The one registry: stage type -> config model, run function and capabilities.

Adding a stage is one file under ``compressor/stages/`` plus one entry in ``_ENTRIES``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from compressor.core.config import StageConfig
from compressor.core.context import StageContext, StageOutput
from compressor.errors import did_you_mean
from compressor.stages import (
    benchmark,
    distill,
    evaluate,
    export_onnx,
    export_openvino,
    export_tflite,
    prune,
    quantize,
    train,
)


@dataclass(frozen=True)
class StageEntry:
    """What the engine knows about a stage type.

    Attributes:
        type: the name recipes use.
        config: frozen pydantic model of its options.
        run: ``run(cfg, ctx) -> StageOutput``.
        summary: one line for ``compressor stages`` and the schema.
        accepts: artifact kinds its ``input`` may be.
        produces: artifact kind it makes, "passthrough" when it only measures its input, or "format" when
            its ``format`` option names the kind.
        refs: config fields naming other stages (a name or a list of names).
        needs_data: whether it reads the data set.
        timing: whether its results depend on thread count (so the count joins its cache key).
        extras: pip extras it needs.
        distributed: whether it trains with :func:`compressor.train.fit.fit`; under ``torchrun`` such
            a stage runs on every rank (DDP), every other stage on rank 0 alone.
    """

    type: str
    config: builtins.type[StageConfig]
    run: Callable[[Any, StageContext], StageOutput]
    summary: str
    accepts: tuple[str, ...]
    produces: str
    refs: tuple[str, ...] = ("input",)
    needs_data: bool = True
    timing: bool = False
    extras: tuple[str, ...] = ()
    distributed: bool = False


_ENTRIES: tuple[StageEntry, ...] = (
    StageEntry(
        type="train", config=train.TrainConfig, run=train.run_train,
        summary="Train a model on the data set; keeps the best checkpoint by validation top-1.",
        accepts=("model",), produces="model", distributed=True,
    ),
    StageEntry(
        type="distill", config=distill.DistillConfig, run=distill.run_distill,
        summary="Distill a teacher into a student (MobileNet, ShuffleNet, any entry point) with KD, DKD "
        "or feature hints; optionally against the same student trained from scratch.",
        accepts=("model",), produces="model", refs=("input", "teacher"), distributed=True,
    ),
    StageEntry(
        type="prune", config=prune.PruneConfig, run=prune.run_prune,
        summary="Remove channels (torch-pruning dependency groups) to a MACs or channel target, fine-tuning between steps.",
        accepts=("model",), produces="model", extras=("prune",),
    ),
    StageEntry(
        type="evaluate", config=evaluate.EvaluateConfig, run=evaluate.run_evaluate,
        summary="Top-1, top-5 and the confusion matrix (or rank-1, rank-5, mAP for embeddings) of a PyTorch model on the validation split.",
        accepts=("model",), produces="passthrough",
    ),
    StageEntry(
        type="export_onnx", config=export_onnx.ExportOnnxConfig, run=export_onnx.run_export_onnx,
        summary="Export to one self-contained ONNX file, verified against PyTorch.",
        accepts=("model",), produces="onnx", extras=("onnx",),
    ),
    StageEntry(
        type="export_openvino", config=export_openvino.ExportOpenVinoConfig,
        run=export_openvino.run_export_openvino,
        summary="Export to OpenVINO IR (.xml + .bin), FP32 or FP16, from PyTorch or ONNX; verified against PyTorch.",
        accepts=("model", "onnx"), produces="openvino", extras=("openvino",),
    ),
    StageEntry(
        type="export_tflite", config=export_tflite.ExportTfliteConfig, run=export_tflite.run_export_tflite,
        summary="Export to TFLite via litert-torch, FP32 or FP16, NCHW or NHWC input; verified against PyTorch.",
        accepts=("model",), produces="tflite", extras=("tflite",),
    ),
    StageEntry(
        type="quantize", config=quantize.QuantizeConfig, run=quantize.run_quantize,
        summary="INT8 (PTQ or QAT) for ONNX Runtime, OpenVINO or TFLite, judged against FP32, with accuracy control.",
        accepts=("model", "onnx", "openvino"), produces="format", extras=("onnx", "openvino", "nncf", "tflite"),
    ),
    StageEntry(
        type="benchmark", config=benchmark.BenchmarkConfig, run=benchmark.run_benchmark,
        summary="Latency, throughput, accuracy, size of artifacts on runtime backends; JSON + Markdown.",
        accepts=("model", "onnx", "openvino", "tflite"), produces="report", refs=("input", "inputs"),
        timing=True,
    ),
)

# Read-only: code that needs another table (a test, a plugin host) passes its own where it is used.
STAGES: Mapping[str, StageEntry] = MappingProxyType({entry.type: entry for entry in _ENTRIES})


class UnknownStageType(KeyError):
    """Raised by :func:`get_stage`; its message lists the known types."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_stage(stage_type: str, stages: Mapping[str, StageEntry] = STAGES) -> StageEntry:
    try:
        return stages[stage_type]
    except KeyError:
        known = ", ".join(sorted(stages))
        msg = f'unknown stage type "{stage_type}"{did_you_mean(stage_type, stages)}; known types: {known}'
        raise UnknownStageType(msg) from None
