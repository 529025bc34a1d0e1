"""``distill``: a trained teacher teaches a student (a new small architecture, or the input model).

The teacher is the stage named by ``teacher`` (default: ``input``). The student is ``student``: a
torchvision name or entry point built for the data's channels and classes, or ``input`` to take the
input model itself (for example a pruned model recovering accuracy from the unpruned teacher).
With ``baseline: true`` the same student (same initial weights, same optimisation settings) is also
trained from scratch with cross-entropy, and both accuracies are reported.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from compressor.core.config import ModelSource, StageConfig, Strict
from compressor.core.context import StageContext, StageOutput
from compressor.errors import CompressorError
from compressor.metrics.evaluation import task_of
from compressor.train.fit import LossFn, TrainOptions, embedding_loss, fit, val_score
from compressor.train.losses import dkd_loss, embedding_distill_loss, hint_loss, kd_loss, relational_loss
from compressor.train.models import load_stage_model, save_stage_model
from compressor.train.students import FeatureTap, TeacherLogitCache, build_student, hint_adapter


class KDLoss(Strict):
    """Hinton KD: ``alpha`` * T^2 * KL(teacher_T || student_T) + (1 - ``alpha``) * cross-entropy."""

    type: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the soft (teacher) term.")


class DKDLoss(Strict):
    """Decoupled KD: ``alpha`` * target-class KD + ``beta`` * non-target KD + ``ce_weight`` * cross-entropy."""

    type: Literal["dkd"] = "dkd"
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(1.0, ge=0, le=100, description="Weight of TCKD (target vs non-target split).")
    beta: float = Field(8.0, ge=0, le=100, description="Weight of NCKD (distribution over non-target classes).")
    ce_weight: float = Field(1.0, ge=0, le=100)


class EmbeddingKD(Strict):
    """Embedding distillation: match the teacher's embeddings (cosine or MSE, through a learned Linear
    projection when the sizes differ), optionally its pairwise-similarity matrix within a batch, plus
    the recipe's metric loss (``embedding.loss``) with weight ``task_weight``."""

    type: Literal["embedding"] = "embedding"
    distance: Literal["cosine", "mse"] = "cosine"
    weight: float = Field(1.0, ge=0, le=1000, description="Weight of the embedding-matching term.")
    relational: float = Field(0.0, ge=0, le=1000, description="Weight of the pairwise-similarity (relational) term.")
    task_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the recipe's metric loss on the student.")


class FeatureHint(Strict):
    """FitNet hint: a learned 1x1 conv adapter maps a student layer onto a teacher layer (MSE)."""

    teacher_layer: str = Field(min_length=1, description="Module name in the teacher, e.g. layer3.")
    student_layer: str = Field(min_length=1, description="Module name in the student, e.g. features.13.")
    weight: float = Field(1.0, gt=0, le=1000)


class DistillConfig(StageConfig, TrainOptions):
    """Options of ``distill``: the student, the loss, and the shared optimisation settings."""

    teacher: str | None = Field(None, description="Stage holding the trained teacher (default: input).")
    student: ModelSource | Literal["input"] = Field(
        default_factory=lambda: ModelSource(arch="mobilenet_v2"),
        description="Architecture to train (arch or entry_point with kwargs, e.g. width_mult), "
        "or 'input' to distill into the input model itself.",
    )
    stem_stride: int | None = Field(
        None, ge=1, le=4,
        description="Override the stride of the student's first convolution (1 suits images under 64 px).",
    )
    loss: Annotated[KDLoss | DKDLoss | EmbeddingKD, Field(discriminator="type")] = Field(
        default_factory=KDLoss, description="kd or dkd for classifiers; embedding for task: embedding recipes.")
    feature: FeatureHint | None = Field(None, description="Add a FitNet hint loss between two named layers.")
    cache_teacher_logits: bool | None = Field(
        None, description="Compute teacher logits once per image (needs data.augment: false and no feature "
        "hint). Default: on when the data is not augmented.",
    )
    baseline: bool = Field(False, description="Also train the same student from scratch and report both.")

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.student == "input":
            if self.teacher is None or self.teacher == self.input:
                msg = ("student: input distills into the input model, so 'teacher' must name another stage "
                       "(for example the unpruned model)")
                raise ValueError(msg)
            if self.stem_stride is not None:
                msg = "stem_stride changes a new student's architecture; remove it when student is 'input'"
                raise ValueError(msg)
        if self.cache_teacher_logits and self.feature is not None:
            msg = "cache_teacher_logits skips the teacher's forward pass, which a feature hint needs; drop one"
            raise ValueError(msg)
        return self


def _loss_fn(cfg: DistillConfig, teacher_logits: Any, hint: tuple[FeatureTap, FeatureTap, nn.Module] | None,
             teacher: nn.Module) -> LossFn:
    spec = cfg.loss

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher_logits(x)
        s_logits = model(x)
        if isinstance(spec, DKDLoss):
            value = dkd_loss(s_logits, t_logits, y, spec.temperature, spec.alpha, spec.beta, spec.ce_weight,
                             cfg.label_smoothing)
        else:
            assert isinstance(spec, KDLoss)  # embedding losses go through _embedding_loss_fn
            value = kd_loss(s_logits.float(), t_logits.float(), y, spec.temperature, spec.alpha,
                            cfg.label_smoothing)
        if hint is not None and cfg.feature is not None:
            s_tap, t_tap, adapter = hint
            value = value + cfg.feature.weight * hint_loss(adapter(s_tap.take()), t_tap.take())
        return value

    return loss


def _embedding_loss_fn(cfg: DistillConfig, spec: EmbeddingKD, teacher_out: Any, objective: nn.Module,
                       proj: nn.Module | None, hint: tuple[FeatureTap, FeatureTap, nn.Module] | None) -> LossFn:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_emb = teacher_out(x)
        s_emb = model(x)
        value = spec.weight * embedding_distill_loss(proj(s_emb) if proj is not None else s_emb, t_emb, spec.distance)
        if spec.task_weight > 0:
            value = value + spec.task_weight * objective(s_emb, y)
        if spec.relational > 0:
            value = value + spec.relational * relational_loss(s_emb, t_emb)
        if hint is not None and cfg.feature is not None:
            s_tap, t_tap, adapter = hint
            value = value + cfg.feature.weight * hint_loss(adapter(s_tap.take()), t_tap.take())
        return value

    return loss


def _use_cache(cfg: DistillConfig, ctx: StageContext) -> bool:
    augment = ctx.data.config.augment
    if cfg.cache_teacher_logits and augment:
        msg = ("cache_teacher_logits: true needs data.augment: false (augmented images differ every epoch, so "
               "cached teacher logits would not match them)")
        raise CompressorError(msg)
    if cfg.cache_teacher_logits is None:
        return not augment and cfg.feature is None
    return cfg.cache_teacher_logits


def run_distill(cfg: DistillConfig, ctx: StageContext) -> StageOutput:
    teacher_art = ctx.inputs.get("teacher", ctx.input)
    teacher = load_stage_model(ctx, teacher_art).to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    data = ctx.data
    task = task_of(ctx)
    if task.is_embedding != isinstance(cfg.loss, EmbeddingKD):
        msg = ("an embedding recipe distills with loss: {type: embedding} (cosine/MSE to the teacher's embeddings)"
               if task.is_embedding else
               "loss type embedding needs a task: embedding recipe; classifiers use loss type kd or dkd")
        raise CompressorError(msg)
    if cfg.student == "input":
        student, meta = load_stage_model(ctx, ctx.input), dict(ctx.input.meta)
        for key in ("macs", "params", "input_shape"):
            meta.pop(key, None)
    else:
        student, meta = build_student(cfg.student, len(data.classes), data.input_shape[0], cfg.stem_stride, ctx.seed,
                                      ctx.task.embedding if task.is_embedding else None, data.input_shape)
    student.to(ctx.device)
    initial = copy.deepcopy(student.state_dict())
    with torch.no_grad():
        probe = teacher(torch.zeros(1, *data.input_shape, device=ctx.device))
        s_probe = student.eval()(torch.zeros(1, *data.input_shape, device=ctx.device))
    if probe.shape[1] != s_probe.shape[1] and not task.is_embedding:
        msg = (f"teacher predicts {probe.shape[1]} classes and the student {s_probe.shape[1]}; "
               "they must agree (set student.num_classes)")
        raise CompressorError(msg)
    m = task.primary
    teacher_top1 = val_score(teacher, ctx)

    metrics: dict[str, Any] = {f"teacher_{m}": teacher_top1, "loss": cfg.loss.type}
    if cfg.baseline:
        ctx.log(f"{ctx.name}: training the student from scratch (baseline)")
        scratch = fit(student, ctx, cfg, desc="scratch")
        metrics |= {f"scratch_{m}": scratch.best_score, "scratch_history": scratch.history}
        student.load_state_dict(initial)

    hint = None
    if cfg.feature is not None:
        s_tap = FeatureTap(student, cfg.feature.student_layer, "student", "feature.student_layer")
        t_tap = FeatureTap(teacher, cfg.feature.teacher_layer, "teacher", "feature.teacher_layer")
        torch.manual_seed(ctx.seed)
        adapter = hint_adapter(student, s_tap, teacher, t_tap, data.input_shape, "feature").to(ctx.device)
        hint = (s_tap, t_tap, adapter)
    cache = None
    if _use_cache(cfg, ctx):
        images, _ = data.calibration_arrays(len(data.train))  # type: ignore[arg-type]
        cache = TeacherLogitCache(teacher, images, ctx.device)
    teacher_logits = cache if cache is not None else teacher
    if isinstance(cfg.loss, EmbeddingKD):
        torch.manual_seed(ctx.seed)
        _, objective = embedding_loss(student, ctx)
        proj = (nn.Linear(s_probe.shape[1], probe.shape[1], bias=False).to(ctx.device)
                if s_probe.shape[1] != probe.shape[1] else None)
        parts = [objective] + ([proj] if proj is not None else []) + ([hint[2]] if hint else [])
        result = fit(student, ctx, cfg, loss_fn=_embedding_loss_fn(cfg, cfg.loss, teacher_logits, objective, proj, hint),
                     extra=nn.ModuleList(parts), desc="distill")
        metrics["projection"] = [int(s_probe.shape[1]), int(probe.shape[1])] if proj is not None else None
    else:
        result = fit(student, ctx, cfg, loss_fn=_loss_fn(cfg, teacher_logits, hint, teacher),
                     extra=hint[2] if hint else None, desc="distill")
    if hint is not None:
        hint[0].remove()
        hint[1].remove()
    artifact = save_stage_model(ctx, student, meta)
    if task.is_embedding and s_probe.shape[1] == probe.shape[1]:
        from compressor.metrics.classification import predict

        images, _ = data.val_arrays()
        metrics["teacher_cosine"] = task.agreement(predict(student, images, ctx.device),
                                                   predict(teacher, images, ctx.device))["mean_cosine"]
    metrics |= {
        f"val_{m}": result.best_score, f"student_{m}": result.best_score,
        "gap_to_teacher": round(teacher_top1 - result.best_score, 3),
        "epochs_run": result.epochs_run, "resumed_from_epoch": result.resumed_from_epoch,
        "history": result.history, "bn_recalibration_batches": result.bn_recalibration_batches,
        "macs": artifact.meta["macs"], "params": artifact.meta["params"],
        "teacher_macs": teacher_art.meta.get("macs"), "teacher_params": teacher_art.meta.get("params"),
        "teacher_logits_cached": cache is not None,
    }
    if cfg.baseline:
        metrics["gain_over_scratch"] = round(result.best_score - metrics[f"scratch_{m}"], 3)
    if cache is not None:
        metrics["teacher_cache_hit_rate"] = round(cache.hits / max(1, cache.hits + cache.misses), 4)
    ctx.log(f"{ctx.name}: {task.label}: teacher {teacher_top1:.2f}, distilled student {result.best_score:.2f}"
            + (f", from scratch {metrics[f'scratch_{m}']:.2f}" if cfg.baseline else ""))
    return StageOutput(artifact, metrics)
