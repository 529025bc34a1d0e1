"""``quantize``: INT8 for ONNX Runtime, OpenVINO or TFLite, post-training or quantization-aware.

Calibration images come from the training split (never validation). The INT8 model is judged
against the FP32 model in its own runtime on validation images; with ``max_accuracy_drop`` the
stage controls accuracy (NNCF's ``quantize_with_accuracy_control`` or, for every runtime, returning
the most sensitive layers to float) and fails with a table of what it tried if the goal is missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from compressor.core.artifacts import Artifact
from compressor.core.config import StageConfig, Strict
from compressor.core.context import StageContext, StageOutput
from compressor.errors import AccuracyGoalError, StageError
from compressor.export.onnx import export_to_onnx
from compressor.metrics.evaluation import Task, task_of
from compressor.metrics.stats import drop_interval
from compressor.quant import runners
from compressor.quant.composition import check_composition, kept_float_names
from compressor.quant.onnxruntime import OrtQuantOptions
from compressor.quant.qat import qat_freezer
from compressor.stages._shared import file_metadata
from compressor.train.fit import TrainOptions
from compressor.train.models import load_stage_model


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
    freeze_bn_after: int | None = Field(
        0, ge=0, description="BatchNorm running statistics update during this many epochs, then stay fixed "
        "(torchvision's QAT recipe freezes them after a few of its many epochs). Default 0: fixed from the "
        "start, as the quantizer ranges were calibrated for them; updated during a short fine-tune they "
        "moved MobileNetV2 away from FP32 (top-1 agreement 97.7% -> 95.8%, docs/int8.md). None: never frozen.")
    freeze_quantizers_after: int | None = Field(
        None, ge=0, description="NNCF quantizer ranges (scales) train during this many epochs, then stay fixed "
        "(torchvision's observer freeze). None: trained throughout.")
    bn_recalibration: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        0, description="Off by default: freeze_bn_after decides what happens to BatchNorm statistics in QAT.")


class QuantizeConfig(StageConfig):
    mode: Literal["ptq", "qat"] = "ptq"
    format: Literal["onnx", "openvino", "tflite"] = Field("onnx", description="INT8 artifact kind to make.")
    engine: Literal["auto", "onnxruntime", "nncf", "pt2e", "ai_edge_quantizer"] = Field(
        "auto", description="onnx: onnxruntime (default) or nncf; openvino: nncf; tflite: ai_edge_quantizer "
        "(default: integer-only graph with the FP32 file's ops) or pt2e.")
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
        False, description="OpenVINO: keep depthwise convolutions in float. auto: on x86 without VNNI or under an "
        "ISA cap below it; a real AVX2 CPU ran them faster in int8, hence false (docs/int8.md).")
    overflow_fix: Literal["auto", "first_layer", "enable", "disable"] = Field(
        "auto", description="NNCF engines (openvino, onnx with engine nncf, QAT): weights in half the 8-bit range "
        "so that u8 x s8 pair sums fit in int16, where x86 int8 kernels without VNNI (SSE, AVX2, AVX-512) "
        "saturate. auto: enable (every convolution and matmul) on such a CPU, first_layer (NNCF's default) "
        "elsewhere. engine onnxruntime has ort.reduce_range for the same.")
    ov_hint: Literal["LATENCY", "THROUGHPUT"] = Field("LATENCY", description="OpenVINO performance hint.")
    eval_images: int | None = Field(1000, ge=1, description="Validation images that judge INT8 against FP32.")
    min_agreement: float = Field(90.0, ge=0, le=100, description="Least top-1 agreement with FP32, percent.")
    max_accuracy_drop: float | None = Field(
        None, ge=0, description="Largest allowed top-1 drop from FP32 in points; turns on accuracy control.")
    accuracy_control: Literal["auto", "nncf", "fallback"] = Field(
        "auto", description="auto: NNCF's quantize_with_accuracy_control where it exists, then the fallback.")
    max_float_layers: int = Field(8, ge=0, description="Most layers the fallback may return to float.")
    require_integer: Literal["warn", "fail", "off"] = Field(
        "warn", description="Op composition of the INT8 file against its FP32 file (recorded in the artifact's "
        "meta): warn logs, fail stops the stage on float islands and layout ops the FP32 file does not have, "
        "naming the ops and their modules; layers kept float on purpose (ignored_scope, accuracy control) "
        "are not counted. off skips it.")
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
            msg = ("mode qat exports to onnx or openvino; for TFLite use mode: ptq (ai_edge_quantizer on the FP32 "
                   "flatbuffer)")
            raise ValueError(msg)
        if self.format == "tflite" and self.float_io and self.resolved_engine() != "ai_edge_quantizer":
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
        # ai_edge_quantizer: its INT8 graph has the FP32 graph's ops in int8 (see compressor/quant/tflite.py)
        return {"onnx": "onnxruntime", "openvino": "nncf", "tflite": "ai_edge_quantizer"}[self.format]


def _source_model(ctx: StageContext) -> torch.nn.Module:
    art = ctx.input
    if art.kind != "model":
        if not art.meta.get("source_model"):
            raise StageError(ctx.name, f"input '{ctx.refs.get('input')}' ({art.kind}) does not record its PyTorch "
                                       "model (meta source_model); take a model artifact as input instead")
        art = Artifact.model_validate(art.meta["source_model"])
    return load_stage_model(ctx, art).cpu().eval()


def _source_file(ctx: StageContext, cfg: QuantizeConfig) -> Path:
    """The FP32 file to quantize: the input's ONNX/IR, or an ONNX export of a PyTorch input."""
    art = ctx.input
    if art.kind == "onnx" or (art.kind == "openvino" and cfg.format == "openvino"):
        return art.path(ctx.cache_root, "model" if art.kind == "onnx" else "xml")
    if art.kind == "model":
        model = _source_model(ctx)
        path = ctx.work_dir / "fp32.onnx"
        example = torch.from_numpy(ctx.data.calibration_arrays(1)[0])
        export_to_onnx(model, example, path, file_metadata(ctx), opset=max(cfg.opset, 18))
        return path
    raise StageError(ctx.name, f"format {cfg.format} cannot start from a {art.kind} artifact; "
                               "give a model or onnx artifact as input")


def resolve_float_depthwise(option: bool | str) -> bool:
    """``auto``: float depthwise only where oneDNN has no 8-bit dot product (x86 without VNNI, or a
    ``ONEDNN_MAX_CPU_ISA`` cap below it)."""
    if option != "auto":
        return bool(option)
    return runners.int8_saturates("openvino")


def resolve_overflow_fix(option: str, fmt: str) -> str:
    """``auto``: ``enable`` (7-bit weights in every convolution and matmul) where the runtime that runs
    ``fmt`` saturates full 8-bit weights on this CPU, else NNCF's own default ``first_layer``."""
    if option != "auto":
        return option
    return "enable" if runners.int8_saturates("openvino" if fmt == "openvino" else "onnxruntime") else "first_layer"


def _plan(cfg: QuantizeConfig, ctx: StageContext, calib: np.ndarray, depthwise_hint: bool | None = None) -> Any:
    from compressor.quant import plans
    from compressor.quant.runners import cpu_has_vnni

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
                                  ignored, per_tensor_activations=cfg.format == "onnx",
                                  overflow_fix=resolve_overflow_fix(cfg.overflow_fix, cfg.format))
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
        if plan.engine == "nncf":
            out["overflow_fix"] = resolve_overflow_fix(cfg.overflow_fix, cfg.format)
    if plan.fmt == "onnx" and plan.engine == "onnxruntime":
        out["ort"] = cfg.ort.model_dump()
    return out


@dataclass
class _Judge:
    """The validation images, the task's score, and the FP32 model's outputs every INT8 candidate is judged by."""

    images: np.ndarray
    labels: np.ndarray
    task: Task
    fp32_logits: np.ndarray
    fp32_score: float

    def score(self, outputs: np.ndarray) -> float:
        return round(self.task.value(outputs, self.labels), 3)

    def scorer(self) -> Any:
        """The score function accuracy control uses (None: its own top-1)."""
        return (lambda outputs, labels: self.task.value(outputs, labels)) if self.task.is_embedding else None

    def outputs(self, plan: Any, candidate: Any) -> tuple[np.ndarray, float]:
        out = runners.logits(plan.runner(candidate), self.images)
        return out, self.score(out)


class _Sensitivity:
    """The per-layer sensitivity report, computed once when first needed and written to the stage folder."""

    def __init__(self, cfg: QuantizeConfig, ctx: StageContext, plan: Any, judge: _Judge):
        self.cfg, self.ctx, self.plan, self.judge = cfg, ctx, plan, judge
        self.rows: list[dict[str, Any]] | None = None
        self.files: dict[str, str] = {}

    def ranking(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        from compressor.quant.sensitivity import layer_sensitivity, write_report

        if self.rows is None:
            j, plan = self.judge, self.plan
            n = min(self.cfg.sensitivity_images, len(j.images))
            self.rows = layer_sensitivity(lambda ex: plan.runner(plan.quantize(ex)), plan.layers(), j.images[:n],
                                          j.labels[:n], j.fp32_logits[:n],
                                          lambda it, desc: self.ctx.progress(it, desc), j.task)
            info = {"format": plan.fmt, "engine": plan.engine, "images": n, "fp32_top1": j.fp32_score,
                    "metric": j.task.label, "fp32_score": j.fp32_score}
            self.files = write_report(self.ctx.out_dir, self.rows, info)
            write_report(self.ctx.work_dir, self.rows, info)  # kept when the stage fails
            metrics["most_sensitive"] = [r["layer"] for r in self.rows[:5]]
        return self.rows


def _nncf_accuracy_control(cfg: QuantizeConfig, ctx: StageContext, plan: Any, judge: _Judge,
                           attempts: list[dict[str, Any]]) -> tuple[Any, np.ndarray, float] | None:
    """NNCF's ``quantize_with_accuracy_control`` (ONNX, OpenVINO): the candidate if it ran, else None."""
    m = judge.task.primary
    try:
        candidate = plan.quantize_ac((judge.images, judge.labels), cfg.max_accuracy_drop, judge.scorer())
    except Exception as err:  # noqa: BLE001 - fall back, and say why in the attempts
        attempts.append({"method": "nncf.quantize_with_accuracy_control", "error": str(err)[:200]})
        if cfg.accuracy_control == "nncf":
            raise StageError(ctx.name, f"nncf accuracy control failed: {err}") from err
        return None
    logits, score = judge.outputs(plan, candidate)
    attempts.append({"method": "nncf.quantize_with_accuracy_control", m: score,
                     "drop": round(judge.fp32_score - score, 3)})
    return candidate, logits, score


def _accuracy_control(cfg: QuantizeConfig, ctx: StageContext, plan: Any, judge: _Judge, sens: _Sensitivity,
                      int8: tuple[Any, np.ndarray, float], metrics: dict[str, Any]
                      ) -> tuple[Any, np.ndarray, float, list[str]]:
    """Bring the INT8 drop within ``max_accuracy_drop``: NNCF's accuracy control, else layers back to float
    by sensitivity. Returns (candidate, logits, score, float layers); the attempts join ``metrics``."""
    from compressor.quant.accuracy_control import restore_until_within

    m, goal = judge.task.primary, cfg.max_accuracy_drop
    assert goal is not None
    sens.ranking(metrics)  # the per-layer report is always written when accuracy control runs
    candidate, logits, score = int8
    attempts: list[dict[str, Any]] = [{"method": "ptq", m: score, "drop": round(judge.fp32_score - score, 3)}]
    metrics["accuracy_control"] = attempts
    if cfg.accuracy_control in ("auto", "nncf") and plan.fmt in ("onnx", "openvino"):
        result = _nncf_accuracy_control(cfg, ctx, plan, judge, attempts)
        if result is not None:
            candidate, logits, score = result
            if judge.fp32_score - score <= goal:
                return candidate, logits, score, []
    if cfg.accuracy_control == "nncf":
        msg = (f"nncf accuracy control left {judge.task.label} {score:.2f} vs FP32 {judge.fp32_score:.2f}, "
               f"more than max_accuracy_drop {goal} pt; try accuracy_control: fallback")
        raise AccuracyGoalError(msg, attempts)
    ranking = [r["layer"] for r in sens.ranking(metrics)]
    try:
        found = restore_until_within(
            lambda ex: plan.runner(plan.quantize(ex)), ranking, judge.images, judge.labels,
            judge.fp32_score, goal, cfg.max_float_layers, plan.fmt,
            first=([], score), scorer=judge.scorer(), metric=judge.task.label)
    except AccuracyGoalError as err:
        msg = f"{err}\nper-layer sensitivity: {ctx.work_dir / 'sensitivity.md'}"
        raise AccuracyGoalError(msg, [*attempts, *err.attempts]) from err
    attempts += [{"method": "fallback", **a} for a in found.attempts[1:]]
    candidate = plan.quantize(found.excluded)
    logits, score = judge.outputs(plan, candidate)
    return candidate, logits, score, found.excluded


def _int8_metrics(cfg: QuantizeConfig, ctx: StageContext, plan: Any, judge: _Judge, logits: np.ndarray,
                  score: float, size: int, excluded: list[str]) -> dict[str, Any]:
    """Agreement with FP32 (fails the stage below ``min_agreement``), the task's INT8 score and sizes."""
    task = judge.task
    agree = task.agreement(logits, judge.fp32_logits)
    agreement = round(task.agreement_value(agree), 3)
    if agreement < cfg.min_agreement:
        raise StageError(ctx.name, f"{plan.fmt} INT8 reaches only {agreement:.2f} ({task.agreement_label} with FP32) "
                                   f"on {len(judge.images)} validation images (option min_agreement "
                                   f"{cfg.min_agreement}); try per_channel: true, bias_correction: full or more "
                                   "calibration_images")
    out: dict[str, Any] = {}
    if task.is_embedding:
        out.update(int8_retrieval=task.score(logits, judge.labels), mean_cosine=agree["mean_cosine"],
                   min_cosine=agree["min_cosine"])
    else:
        out["top1_agreement"] = agreement
    out.update({f"int8_{task.primary}": score}, drop=round(judge.fp32_score - score, 3),
               eval_images=len(judge.images), float_layers=excluded, fp32_size_bytes=plan.fp32_size(),
               size_bytes=size)
    # the drop with its 95% interval on these same images, by the machinery the gates use
    interval = drop_interval({"outcomes": task.outcomes(judge.fp32_logits, judge.labels)},
                             {"outcomes": task.outcomes(logits, judge.labels)}, task.primary)
    if interval is not None:
        out["drop_interval"] = interval.to_json()
    return out


def run_quantize(cfg: QuantizeConfig, ctx: StageContext) -> StageOutput:
    calib, _ = ctx.data.calibration_arrays(cfg.calibration_images)
    val_images, val_labels = ctx.data.val_arrays(cfg.eval_images)
    if cfg.mode == "qat":
        return _run_qat(cfg, ctx, calib, (val_images, val_labels))
    plan = _plan(cfg, ctx, calib)
    task = task_of(ctx)
    fp32_logits = runners.logits(plan.fp32_runner(), val_images)
    judge = _Judge(val_images, val_labels, task, fp32_logits, round(task.value(fp32_logits, val_labels), 3))
    metrics: dict[str, Any] = {f"fp32_{task.primary}": judge.fp32_score, "settings": _settings(cfg, plan)}
    sens = _Sensitivity(cfg, ctx, plan, judge)
    if cfg.sensitivity_report:
        sens.ranking(metrics)
    candidate = plan.quantize([])
    logits, score = judge.outputs(plan, candidate)
    excluded: list[str] = []
    if cfg.max_accuracy_drop is not None and judge.fp32_score - score > cfg.max_accuracy_drop:
        candidate, logits, score, excluded = _accuracy_control(cfg, ctx, plan, judge, sens,
                                                               (candidate, logits, score), metrics)
    files = plan.save(candidate, ctx.out_dir)
    size = sum((ctx.out_dir / f).stat().st_size for f in files.values())
    metrics.update(_int8_metrics(cfg, ctx, plan, judge, logits, score, size, excluded))
    comp = _composition(cfg, ctx, plan.fmt, ctx.out_dir / files.get("model", files.get("xml", "")),
                        plan.fp32_path, kept_float_names(cfg.ignored_scope.names, plan, excluded))
    art = _artifact(ctx, plan.fmt, {**files, **sens.files}, metrics["settings"], excluded, comp)
    if comp is not None:
        metrics["op_composition"] = {"summary": comp["summary"], "problems": comp["problems"]}
    return StageOutput(art, metrics)


def _composition(cfg: QuantizeConfig, ctx: StageContext, fmt: str, int8: Path, fp32: Path,
                 kept_float: list[str]) -> dict[str, Any] | None:
    if cfg.require_integer == "off":
        return None
    return check_composition(fmt, int8, fp32, cfg.require_integer == "fail", ctx.name, ctx.threads, kept_float,
                             cfg.ignored_scope.patterns, ctx.log)


def _artifact(ctx: StageContext, fmt: str, files: dict[str, str], settings: dict[str, Any],
              excluded: list[str], composition: dict[str, Any] | None = None) -> Artifact:
    src = ctx.input
    source_model = src.model_dump() if src.kind == "model" else src.meta.get("source_model")
    layout = "NCHW"
    meta = {
        "format": fmt, "precision": "int8", "layout": layout, "classes": ctx.data.classes,
        "preprocess": ctx.data.describe()["preprocess"], "source_model": source_model,
        "macs": src.meta.get("macs"), "params": src.meta.get("params"), "input_shape": src.meta.get("input_shape"),
        "quantization": settings, "float_layers": excluded,
    }
    if composition is not None:
        meta["op_composition"] = composition
    return ctx.new_artifact(fmt, files, meta)


def qat_versus_ptq(fp32: np.ndarray, ptq: np.ndarray, qat: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """QAT's end against its PTQ start on the same images: the paired change in top-1 with its 95% interval
    (Bonett-Price; McNemar's p) and each one's top-1 agreement with FP32 -- distillation pulls QAT towards
    the FP32 model, so a PTQ start that beat FP32 by chance is given back, not lost to QAT."""
    from compressor.metrics.stats import paired_drop

    drop = paired_drop(ptq.argmax(1) == labels, qat.argmax(1) == labels)
    change, low, high = -drop.value, -drop.high, -drop.low
    verdict = "beyond noise" if low > 0 or high < 0 else "within noise"
    return {"change_pt": round(change, 3), "low_pt": round(low, 3), "high_pt": round(high, 3), "verdict": verdict,
            "test": drop.method, "images": drop.n,
            "ptq_agreement_with_fp32": round(float((ptq.argmax(1) == fp32.argmax(1)).mean()) * 100, 3),
            "qat_agreement_with_fp32": round(float((qat.argmax(1) == fp32.argmax(1)).mean()) * 100, 3)}


def _run_qat(cfg: QuantizeConfig, ctx: StageContext, calib: np.ndarray,
             val: tuple[np.ndarray, np.ndarray]) -> StageOutput:
    """The ``quantize`` stage in ``mode: qat``: NNCF fake-quant, fine-tune (optionally with KD), export."""
    from compressor.quant.plans import nncf_kwargs
    from compressor.quant.qat import export_qat, insert_fake_quant, qat_loss
    from compressor.train.fit import TrainOptions, fit

    images, labels = val
    fp32 = _source_model(ctx)
    # NNCF's PyTorch backend has fast bias correction only (full is refused by the config check).
    bias = "fast" if cfg.bias_correction == "auto" else cfg.bias_correction
    kwargs = nncf_kwargs(cfg.resolved_preset(), bias, min(cfg.calibration_images, len(calib)),
                         cfg.ignored_scope.model_dump(), per_tensor_activations=cfg.format == "onnx",
                         overflow_fix=resolve_overflow_fix(cfg.overflow_fix, cfg.format))
    teacher = _source_model(ctx)
    quantized = insert_fake_quant(_source_model(ctx), calib, kwargs)
    task = task_of(ctx)
    scorer = task.value if task.is_embedding else None
    ptq_logits = runners.logits(lambda x: quantized(torch.from_numpy(x)).detach().numpy(), images)
    ptq_top1 = round((scorer or runners.top1_score)(ptq_logits, labels), 3)
    opts = TrainOptions.model_validate(cfg.qat.model_dump(
        exclude={"distill", "temperature", "alpha", "freeze_bn_after", "freeze_quantizers_after"}))
    loss_fn, head = qat_loss(ctx, teacher, quantized, cfg.qat.distill, cfg.qat.alpha, cfg.qat.temperature,
                             opts.label_smoothing)
    start_state = {k: v.detach().clone() for k, v in quantized.state_dict().items()}
    frozen: list[dict[str, Any]] = []
    freeze = qat_freezer(cfg.qat.freeze_bn_after, cfg.qat.freeze_quantizers_after, frozen)
    result = fit(quantized, ctx, opts, loss_fn=loss_fn, extra=head, desc="qat", epoch_start=freeze)
    quantized.cpu().eval()
    qat_logits = runners.logits(lambda x: quantized(torch.from_numpy(x)).detach().numpy(), images)
    qat_top1 = round((scorer or runners.top1_score)(qat_logits, labels), 3)
    kept = "qat"
    if qat_top1 < ptq_top1:
        # Fine-tuning ended below its own starting point (NNCF's PTQ): keep the start, as a best-epoch
        # selection that counts the start as epoch 0 would; the manifest says which was kept.
        quantized.load_state_dict(start_state)
        kept = "ptq start"
    path, files, run, folded = export_qat(quantized, torch.from_numpy(calib[:1]), ctx.out_dir, cfg.format,
                                          cfg.onnx_exporter, cfg.opset, ctx.threads, cfg.ov_hint)
    fp32_logits = runners.logits(lambda x: fp32(torch.from_numpy(x)).detach().numpy(), images)
    int8_logits = runners.logits(run, images)
    versus = None if task.is_embedding else qat_versus_ptq(fp32_logits, ptq_logits, qat_logits, labels)
    if versus is not None:
        ctx.log(f"{ctx.name}: QAT vs its PTQ start {versus['change_pt']:+.2f} pt (95% {versus['low_pt']:+.2f} .. "
                f"{versus['high_pt']:+.2f}, {versus['verdict']}); top-1 agreement with FP32: PTQ "
                f"{versus['ptq_agreement_with_fp32']:.1f}%, QAT {versus['qat_agreement_with_fp32']:.1f}%; kept {kept}")
    fp32_top1 = round(task.value(fp32_logits, labels), 3)
    int8_top1 = round(task.value(int8_logits, labels), 3)
    settings = {"engine": "nncf", "mode": "qat", "calibration_images": cfg.calibration_images,
                "nncf": {k: str(v) for k, v in kwargs.items()},
                "overflow_fix": resolve_overflow_fix(cfg.overflow_fix, cfg.format), "qat": cfg.qat.model_dump(), "frozen": frozen,
                **folded}
    drop = round(fp32_top1 - int8_top1, 3)
    metrics: dict[str, Any] = {"fp32_top1": fp32_top1, "ptq_top1": ptq_top1, "qat_top1": qat_top1, "kept": kept,
               "qat_versus_ptq": versus,
               "int8_top1": int8_top1,
               "drop": drop, "qat_best_val_top1": result.best_score,
               "qat_history": result.history, "eval_images": len(images), "settings": settings,
               "top1_agreement" if not task.is_embedding else "cosine_agreement_pct":
                   round(task.agreement_value(task.agreement(int8_logits, fp32_logits)), 3),
               "size_bytes": sum((ctx.out_dir / f).stat().st_size for f in files.values())}
    if cfg.max_accuracy_drop is not None and drop > cfg.max_accuracy_drop:
        msg = (f"QAT INT8 top-1 {int8_top1:.2f} is {drop:.2f} pt below FP32 "
               f"{fp32_top1:.2f} (max_accuracy_drop {cfg.max_accuracy_drop}); PTQ gave {ptq_top1:.2f}; "
               "train more epochs (qat.epochs) or lower qat.lr")
        raise AccuracyGoalError(msg, [{"method": "qat", "top1": int8_top1, "ptq_top1": ptq_top1}])
    fp32_file = _source_file(ctx, cfg)
    if cfg.format == "openvino" and fp32_file.suffix != ".xml":
        from compressor.quant.openvino import read_ov_model, save_ov_model

        save_ov_model(read_ov_model(fp32_file), ctx.work_dir / "fp32.xml")
        fp32_file = ctx.work_dir / "fp32.xml"
    comp = _composition(cfg, ctx, cfg.format, path, fp32_file, list(cfg.ignored_scope.names))
    if comp is not None:
        metrics["op_composition"] = {"summary": comp["summary"], "problems": comp["problems"]}
    return StageOutput(_artifact(ctx, cfg.format, files, settings, [], comp), metrics)
