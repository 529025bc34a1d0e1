"""``quantize``: INT8 for ONNX Runtime, OpenVINO or TFLite, post-training or quantization-aware.

Calibration images come from the training split (never validation). The INT8 model is judged
against the FP32 model in its own runtime on validation images; with ``max_accuracy_drop`` the
stage controls accuracy (NNCF's ``quantize_with_accuracy_control`` or, for every runtime, returning
the most sensitive layers to float) and fails with a table of what it tried if the goal is missed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from compressor.artifacts import Artifact
from compressor.config import StageConfig, Strict
from compressor.context import StageContext, StageOutput, load_model
from compressor.errors import AccuracyGoalError, StageError
from compressor.evaluation import task_of
from compressor.quant.onnxruntime import OrtQuantOptions
from compressor.training import TrainOptions


class IgnoredScope(Strict):
    """Layers NNCF leaves in float (names, regular expressions, operation types)."""

    names: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    types: list[str] = Field(default_factory=list)


class QatOptions(TrainOptions):
    """Fine-tuning of the fake-quantized model (defaults: short, low learning rate)."""

    epochs: int = Field(2, ge=1, le=10000)
    lr: float = Field(0.001, gt=0, le=10)
    distill: bool = Field(True, description="Distil from the FP32 input model (Hinton KD).")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)


class QuantizeConfig(StageConfig):
    mode: Literal["ptq", "qat"] = "ptq"
    format: Literal["onnx", "openvino", "tflite"] = Field("onnx", description="INT8 artifact kind to make.")
    engine: Literal["auto", "onnxruntime", "nncf", "pt2e", "ai_edge_quantizer"] = Field(
        "auto", description="onnx: onnxruntime (default) or nncf; openvino: nncf; tflite: pt2e (default) or "
        "ai_edge_quantizer.")
    calibration_images: int = Field(300, ge=1, description="Training images used for calibration.")
    per_channel: bool | Literal["auto"] = Field(
        "auto", description="Per-channel weight scales; auto: on for TFLite, NNCF and depthwise networks.")
    bias_correction: Literal["auto", "fast", "full", "none"] = Field(
        "auto", description="NNCF bias correction; auto: full for depthwise networks, else fast.")
    preset: Literal["auto", "performance", "mixed"] = Field(
        "auto", description="NNCF preset; auto: mixed (asymmetric u8 activations, what ONNX Runtime's integer "
        "kernels take) for format onnx, performance (symmetric) for openvino.")
    ignored_scope: IgnoredScope = IgnoredScope()
    ort: OrtQuantOptions = OrtQuantOptions()
    float_io: bool = Field(False, description="TFLite: float input/output (int8 inside); else int8 I/O.")
    float_depthwise: bool | Literal["auto"] = Field(
        "auto", description="OpenVINO: keep depthwise convolutions in float; auto: on x86 without VNNI, where "
        "oneDNN's INT8 depthwise kernels are slower than float (see README).")
    ov_hint: Literal["LATENCY", "THROUGHPUT"] = Field("LATENCY", description="OpenVINO performance hint.")
    eval_images: int | None = Field(1000, ge=1, description="Validation images that judge INT8 against FP32.")
    min_agreement: float = Field(90.0, ge=0, le=100, description="Least top-1 agreement with FP32, percent.")
    max_accuracy_drop: float | None = Field(
        None, ge=0, description="Largest allowed top-1 drop from FP32 in points; turns on accuracy control.")
    accuracy_control: Literal["auto", "nncf", "fallback"] = Field(
        "auto", description="auto: NNCF's quantize_with_accuracy_control where it exists, then the fallback.")
    max_float_layers: int = Field(8, ge=0, description="Most layers the fallback may return to float.")
    sensitivity_report: bool = Field(False, description="Write the per-layer report (always with accuracy control).")
    sensitivity_images: int = Field(200, ge=1, description="Validation images for per-layer sensitivity.")
    qat: QatOptions = QatOptions()
    onnx_exporter: Literal["torchscript", "dynamo"] = Field(
        "torchscript", description="QAT export to ONNX; only torchscript handles NNCF fake-quant nodes.")
    opset: int = Field(17, ge=13, le=23)

    @model_validator(mode="after")
    def _check(self) -> QuantizeConfig:
        allowed = {"onnx": ("auto", "onnxruntime", "nncf"), "openvino": ("auto", "nncf"),
                   "tflite": ("auto", "pt2e", "ai_edge_quantizer")}[self.format]
        if self.engine not in allowed:
            msg = f"engine '{self.engine}' does not make format '{self.format}'; choose one of {', '.join(allowed)}"
            raise ValueError(msg)
        if self.mode == "qat" and self.bias_correction == "full":
            msg = "bias_correction full is not available with mode qat (NNCF's PyTorch backend has fast only)"
            raise ValueError(msg)
        if self.mode == "qat" and self.format == "tflite":
            msg = "mode qat exports to onnx or openvino; for TFLite use mode: ptq (PT2E on the QAT-free model)"
            raise ValueError(msg)
        if self.format == "tflite" and self.float_io and self.engine != "ai_edge_quantizer":
            msg = "float_io needs engine: ai_edge_quantizer (the PT2E path makes int8 input and output)"
            raise ValueError(msg)
        return self

    def resolved_preset(self) -> str:
        if self.preset != "auto":
            return self.preset
        return "mixed" if self.format == "onnx" else "performance"

    def resolved_engine(self) -> str:
        if self.engine != "auto":
            return self.engine
        return {"onnx": "onnxruntime", "openvino": "nncf", "tflite": "pt2e"}[self.format]


def _source_model(ctx: StageContext) -> torch.nn.Module:
    art = ctx.input
    if art.kind != "model":
        if "source_model" not in art.meta:
            raise StageError(ctx.name, f"input '{ctx.refs.get('input')}' ({art.kind}) does not record its PyTorch "
                                       "model (meta source_model); take a model artifact as input instead")
        art = Artifact.model_validate(art.meta["source_model"])
    return load_model(ctx, art).cpu().eval()


def _source_file(ctx: StageContext, cfg: QuantizeConfig) -> Path:
    """The FP32 file to quantize: the input's ONNX/IR, or an ONNX export of a PyTorch input."""
    art = ctx.input
    if art.kind == "onnx" or (art.kind == "openvino" and cfg.format == "openvino"):
        return art.path(ctx.cache_root, "model" if art.kind == "onnx" else "xml")
    if art.kind == "model":
        from compressor.stages.export_onnx import ExportOnnxConfig, export_to_onnx, onnx_metadata

        model = _source_model(ctx)
        path = ctx.work_dir / "fp32.onnx"
        example = torch.from_numpy(ctx.data.calibration_arrays(1)[0])
        export_to_onnx(model, example, path, ExportOnnxConfig(name="fp32", opset=max(cfg.opset, 18)),
                       onnx_metadata(ctx))
        return path
    raise StageError(ctx.name, f"format {cfg.format} cannot start from a {art.kind} artifact; "
                               "give a model or onnx artifact as input")


def resolve_float_depthwise(option: bool | str) -> bool:
    """``auto``: float depthwise only where oneDNN has no 8-bit dot product (x86 without VNNI, or a
    ``ONEDNN_MAX_CPU_ISA`` cap below it)."""
    if option != "auto":
        return bool(option)
    import platform

    from compressor.envinfo import cpu_info
    from compressor.quant.evaluate import cpu_has_vnni

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    caps = {v.upper() for v in cpu_info()["isa_caps"].values()}
    return not cpu_has_vnni() or bool(caps & {"SSE41", "AVX", "AVX2", "AVX512_CORE"})


def _plan(cfg: QuantizeConfig, ctx: StageContext, calib: np.ndarray, depthwise_hint: bool | None = None) -> Any:
    from compressor.quant import plans
    from compressor.quant.evaluate import cpu_has_vnni

    engine = cfg.resolved_engine()
    work = ctx.work_dir
    work.mkdir(parents=True, exist_ok=True)
    if cfg.format == "tflite":
        per_channel = cfg.per_channel if cfg.per_channel != "auto" else True
        return plans.TflitePlan(_source_model(ctx), work, calib, engine, per_channel, cfg.float_io, ctx.threads)
    src = _source_file(ctx, cfg)
    depthwise = depthwise_hint
    if depthwise is None:
        import onnx

        depthwise = src.suffix == ".onnx" and any(
            n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
            for n in onnx.load(str(src)).graph.node)
    bias = cfg.bias_correction if cfg.bias_correction != "auto" else ("full" if depthwise else "fast")
    ignored = cfg.ignored_scope.model_dump()
    if cfg.format == "openvino" and depthwise and resolve_float_depthwise(cfg.float_depthwise):
        ignored["types"] = sorted({*ignored["types"], "GroupConvolution"})
    nncf_args = plans.nncf_kwargs(cfg.resolved_preset(), bias, min(cfg.calibration_images, len(calib)),
                                  ignored, per_tensor_activations=cfg.format == "onnx")
    if cfg.format == "openvino":
        return plans.OpenVinoPlan(src, work, calib, nncf_args, ctx.threads, cfg.ov_hint)
    per_channel = cfg.per_channel if cfg.per_channel != "auto" else bool(depthwise)
    reduce_range = cfg.ort.reduce_range if cfg.ort.reduce_range != "auto" else not cpu_has_vnni()
    return plans.OnnxPlan(src, work, calib, engine, cfg.ort, per_channel, reduce_range, nncf_args, ctx.threads)


def _settings(cfg: QuantizeConfig, plan: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": plan.engine, "mode": cfg.mode, "calibration_images": cfg.calibration_images}
    for attr in ("per_channel", "reduce_range", "float_io"):
        if hasattr(plan, attr):
            out[attr] = getattr(plan, attr)
    if hasattr(plan, "nncf_args"):
        out["nncf"] = {k: str(v) for k, v in plan.nncf_args.items()}
    if plan.fmt == "onnx" and plan.engine == "onnxruntime":
        out["ort"] = cfg.ort.model_dump()
    return out


def run_quantize(cfg: QuantizeConfig, ctx: StageContext) -> StageOutput:
    from compressor.quant import evaluate
    from compressor.quant.accuracy_control import restore_until_within
    from compressor.quant.sensitivity import layer_sensitivity, write_report

    calib, _ = ctx.data.calibration_arrays(cfg.calibration_images)
    val_images, val_labels = ctx.data.val_arrays(cfg.eval_images)
    if cfg.mode == "qat":
        from compressor.quant.qat import run_qat

        return run_qat(cfg, ctx, calib, (val_images, val_labels))
    plan = _plan(cfg, ctx, calib)
    task = task_of(ctx)
    m = task.primary  # top1, or rank1 / map for embedding models

    def score(outputs: np.ndarray) -> float:
        return round(task.value(outputs, val_labels), 3)

    def scorer(outputs: np.ndarray, labels: np.ndarray) -> float:
        return task.value(outputs, labels)

    fp32_logits = evaluate.logits(plan.fp32_runner(), val_images)
    fp32_top1 = score(fp32_logits)
    metrics: dict[str, Any] = {f"fp32_{m}": fp32_top1, "settings": _settings(cfg, plan)}
    extra_files: dict[str, str] = {}

    rows: list[dict[str, Any]] | None = None

    def sensitivity() -> list[dict[str, Any]]:
        nonlocal rows, extra_files
        if rows is None:
            n = min(cfg.sensitivity_images, len(val_images))
            rows = layer_sensitivity(lambda ex: plan.runner(plan.quantize(ex)), plan.layers(), val_images[:n],
                                     val_labels[:n], fp32_logits[:n], lambda it, desc: ctx.progress(it, desc), task)
            info = {"format": plan.fmt, "engine": plan.engine, "images": n, "fp32_top1": fp32_top1,
                    "metric": task.label, "fp32_score": fp32_top1}
            extra_files = write_report(ctx.out_dir, rows, info)
            write_report(ctx.work_dir, rows, info)  # kept when the stage fails
            metrics["most_sensitive"] = [r["layer"] for r in rows[:5]]
        return rows

    if cfg.sensitivity_report:
        sensitivity()
    excluded: list[str] = []
    candidate = plan.quantize([])
    int8_logits = evaluate.logits(plan.runner(candidate), val_images)
    int8_top1 = score(int8_logits)
    if cfg.max_accuracy_drop is not None and fp32_top1 - int8_top1 > cfg.max_accuracy_drop:
        sensitivity()  # the per-layer report is always written when accuracy control runs
        attempts: list[dict[str, Any]] = [{"method": "ptq", m: int8_top1, "drop": round(fp32_top1 - int8_top1, 3)}]
        done = False
        if cfg.accuracy_control in ("auto", "nncf") and plan.fmt in ("onnx", "openvino"):
            try:
                candidate = plan.quantize_ac((val_images, val_labels), cfg.max_accuracy_drop,
                                             scorer if task.is_embedding else None)
                int8_logits = evaluate.logits(plan.runner(candidate), val_images)
                int8_top1 = score(int8_logits)
                attempts.append({"method": "nncf.quantize_with_accuracy_control", m: int8_top1,
                                 "drop": round(fp32_top1 - int8_top1, 3)})
                done = fp32_top1 - int8_top1 <= cfg.max_accuracy_drop
            except Exception as err:  # noqa: BLE001 - fall back, and say why in the attempts
                attempts.append({"method": "nncf.quantize_with_accuracy_control", "error": str(err)[:200]})
                if cfg.accuracy_control == "nncf":
                    raise StageError(ctx.name, f"nncf accuracy control failed: {err}") from err
        if not done:
            if cfg.accuracy_control == "nncf":
                msg = (
                    f"nncf accuracy control left {task.label} {int8_top1:.2f} vs FP32 {fp32_top1:.2f}, "
                    f"more than max_accuracy_drop {cfg.max_accuracy_drop} pt; try accuracy_control: fallback"
                )
                raise AccuracyGoalError(
                    msg,
                    attempts)
            ranking = [r["layer"] for r in sensitivity()]
            try:
                result = restore_until_within(
                    lambda ex: plan.runner(plan.quantize(ex)), ranking, val_images, val_labels,
                    fp32_top1, cfg.max_accuracy_drop, cfg.max_float_layers, plan.fmt,
                    first=([], int8_top1), scorer=scorer if task.is_embedding else None, metric=task.label)
            except AccuracyGoalError as err:
                msg = f"{err}\nper-layer sensitivity: {ctx.work_dir / 'sensitivity.md'}"
                raise AccuracyGoalError(msg, [*attempts, *err.attempts]) from err
            excluded = result.excluded
            attempts += [{"method": "fallback", **a} for a in result.attempts[1:]]
            candidate = plan.quantize(excluded)
            int8_logits = evaluate.logits(plan.runner(candidate), val_images)
            int8_top1 = score(int8_logits)
        metrics["accuracy_control"] = attempts

    files = plan.save(candidate, ctx.out_dir)
    agree = task.agreement(int8_logits, fp32_logits)
    agreement = round(task.agreement_value(agree), 3)
    if agreement < cfg.min_agreement:
        raise StageError(ctx.name, f"{plan.fmt} INT8 reaches only {agreement:.2f} ({task.agreement_label} with FP32) "
                                   f"on {len(val_images)} validation images (option min_agreement {cfg.min_agreement}); "
                                   "try per_channel: true, bias_correction: full or more calibration_images")
    size = sum((ctx.out_dir / f).stat().st_size for f in files.values())
    if task.is_embedding:
        metrics.update(int8_retrieval=task.score(int8_logits, val_labels), mean_cosine=agree["mean_cosine"],
                       min_cosine=agree["min_cosine"])
    else:
        metrics["top1_agreement"] = agreement
    metrics.update({f"int8_{m}": int8_top1}, drop=round(fp32_top1 - int8_top1, 3),
                   eval_images=len(val_images), float_layers=excluded, fp32_size_bytes=plan.fp32_size(),
                   size_bytes=size)
    art = _artifact(ctx, plan.fmt, {**files, **extra_files}, metrics["settings"], excluded)
    return StageOutput(art, metrics)


def _artifact(ctx: StageContext, fmt: str, files: dict[str, str], settings: dict[str, Any],
              excluded: list[str]) -> Artifact:
    src = ctx.input
    source_model = src.model_dump() if src.kind == "model" else src.meta.get("source_model")
    layout = "NCHW"
    meta = {
        "format": fmt, "precision": "int8", "layout": layout, "classes": ctx.data.classes,
        "preprocess": ctx.data.describe()["preprocess"], "source_model": source_model,
        "macs": src.meta.get("macs"), "params": src.meta.get("params"), "input_shape": src.meta.get("input_shape"),
        "quantization": settings, "float_layers": excluded,
    }
    return ctx.new_artifact(fmt, files, meta)
