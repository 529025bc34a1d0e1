"""``prune``: remove channels for real (torch-pruning dependency groups), fine-tuning between steps.

Schedule: optional sparsity training, then ``steps`` times: prune to the step's share of the
target, measure, fine-tune (optionally distilling from the unpruned model), measure. The result is
a plain state dict plus the changed layer shapes in the artifact's ``structure`` metadata, so it
reloads from the architecture source without any pickled class.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from compressor.core.config import StageConfig, Strict
from compressor.core.context import StageContext, StageOutput
from compressor.metrics.classification import count_params
from compressor.metrics.evaluation import task_of
from compressor.train.fit import LossFn, TrainOptions, embedding_loss, fit, val_score
from compressor.train.losses import embedding_distill_loss, kd_loss, triplet_batch_hard
from compressor.train.models import build_from_meta, load_stage_model, save_stage_model, structure_of
from compressor.train.pruning import (
    ChannelPruner,
    PruneOptions,
    Sparsity,
    channels_kept,
    check_runs,
    layer_widths,
)


class DistillOptions(Strict):
    """Distil from the unpruned model while fine-tuning."""

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the soft (teacher) term; 1 - alpha for labels.")


class SparsityOptions(Strict):
    """Sparsity-inducing training before the first pruning step, with torch-pruning's regularizers."""

    method: Sparsity = Field(description="group_norm: DepGraph group-norm regularizer; bn_l1: L1 on BN scales.")
    reg: float = Field(1e-4, gt=0, le=1, description="Regularization strength.")
    epochs: int = Field(1, ge=1, le=1000)
    lr: float | None = Field(None, gt=0, description="Default: finetune.lr (or 0.01 without finetune).")


class PruneConfig(StageConfig, PruneOptions):
    """Options of the ``prune`` stage."""

    steps: int = Field(1, ge=1, le=100, description="Prune in this many steps, fine-tuning after each.")
    finetune: TrainOptions | None = Field(
        default_factory=lambda: TrainOptions(epochs=2, lr=0.01),
        description="Fine-tune after every step (epochs per step); null skips fine-tuning.")
    distill: DistillOptions | None = Field(None, description="Distil from the unpruned model during fine-tune.")
    sparsity: SparsityOptions | None = None
    taylor_batches: int = Field(4, ge=1, le=1000, description="Training batches whose gradients taylor uses.")

    @model_validator(mode="after")
    def _sparsity_importance(self) -> PruneConfig:
        if self.sparsity is not None and self.sparsity.method == "group_norm" and self.importance not in ("l1", "l2"):
            msg = (f"sparsity.method group_norm weighs groups by their magnitude and needs importance l1 or l2 "
                   f"(got {self.importance}); use sparsity.method bn_l1 with {self.importance}")
            raise ValueError(msg)
        return self


def _distill_loss(teacher: nn.Module, opts: DistillOptions, smoothing: float) -> LossFn:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return kd_loss(model(x), target, y, opts.temperature, opts.alpha, smoothing)

    return loss


def _with_regularizer(pruner: ChannelPruner, base: LossFn) -> LossFn:
    """Add torch-pruning's sparsity gradient as a linear term: its gradient is exactly that term."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = base(model, x, y)
        terms = pruner.regularization_terms()
        if not terms:
            return value
        linear = torch.stack([(g * p).sum() for p, g in terms]).sum()
        return value + linear - linear.detach()

    return loss


def _embedding_distill_loss(teacher: nn.Module, opts: DistillOptions, objective: nn.Module) -> LossFn:
    """Embedding models: ``alpha`` x (1 - cos) to the unpruned model + (1 - ``alpha``) x the metric loss."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        emb = model(x)
        return opts.alpha * embedding_distill_loss(emb, target) + (1 - opts.alpha) * objective(emb, y)

    return loss


def _taylor_gradients(model: nn.Module, ctx: StageContext, batches: int) -> None:
    """Accumulate loss gradients over a few training batches (eval mode: BN statistics untouched).

    Classifiers use cross-entropy; embedding models the batch-hard triplet loss (no head needed).
    """
    model.eval().to(ctx.device)
    model.zero_grad(set_to_none=True)
    criterion = nn.CrossEntropyLoss()
    embedding = task_of(ctx).is_embedding
    for i, (x, y) in enumerate(ctx.data.train_loader()):
        if i >= batches:
            break
        out, y = model(x.to(ctx.device)), y.to(ctx.device)
        (triplet_batch_hard(out, y) if embedding else criterion(out, y)).backward()


def run_prune(cfg: PruneConfig, ctx: StageContext) -> StageOutput:
    model = load_stage_model(ctx, ctx.input).to(ctx.device)
    torch.manual_seed(ctx.seed)
    example = torch.randn(1, *ctx.data.input_shape, generator=torch.Generator().manual_seed(ctx.seed)).to(ctx.device)
    with torch.no_grad():
        out_shape = model.eval()(example).shape
    top1_before = val_score(model, ctx)
    params_before = count_params(model)
    teacher = copy.deepcopy(model).eval() if cfg.distill is not None else None
    pruner = ChannelPruner(model, example, cfg, steps=cfg.steps,
                           sparsity=cfg.sparsity.method if cfg.sparsity else None,
                           reg=cfg.sparsity.reg if cfg.sparsity else 1e-4)
    ctx.log(f"{ctx.name}: {len(pruner.prunable)} prunable groups, {len(pruner.ignored)} ignored and "
            f"{len(pruner.frozen)} frozen layers; val top-1 before pruning {top1_before:.2f}")

    train = cfg.finetune or TrainOptions(epochs=1, lr=0.01)
    task = task_of(ctx)
    base_loss: LossFn | None = None
    head: nn.Module | None = None  # embedding models: the training head of the metric loss
    if task.is_embedding:
        torch.manual_seed(ctx.seed)
        plain_embedding, head = embedding_loss(model, ctx)
        base_loss = plain_embedding
        if teacher is not None and cfg.distill is not None:
            base_loss = _embedding_distill_loss(teacher, cfg.distill, head)
    elif teacher is not None and cfg.distill is not None:
        base_loss = _distill_loss(teacher, cfg.distill, train.label_smoothing)
    metrics: dict[str, Any] = {"top1_before": top1_before, "metric": task.primary}
    if cfg.sparsity is not None:
        criterion = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
        plain: LossFn = base_loss or (lambda m, x, y: criterion(m(x), y))
        opts = train.model_copy(update={"epochs": cfg.sparsity.epochs, "lr": cfg.sparsity.lr or train.lr})
        result = fit(model, ctx, opts, loss_fn=_with_regularizer(pruner, plain), extra=head, desc="sparsity")
        metrics["top1_after_sparsity"] = result.best_score
        ctx.log(f"{ctx.name}: sparsity training ({cfg.sparsity.method}) val top-1 {result.best_score:.2f}")

    history = []
    for step in range(1, cfg.steps + 1):
        torch.manual_seed(ctx.seed + step)  # random importance: the same choice when a run resumes
        if cfg.importance == "taylor":
            _taylor_gradients(model, ctx, cfg.taylor_batches)
        macs = pruner.prune_step(step)
        model.zero_grad(set_to_none=True)
        check_runs(model, example, out_shape)
        record: dict[str, Any] = {"step": step, "macs": macs, "params": count_params(model),
                                  "top1_pruned": val_score(model, ctx)}
        if cfg.finetune is not None:
            result = fit(model, ctx, cfg.finetune, loss_fn=base_loss, extra=head, desc=f"finetune{step}")
            record.update(top1_finetuned=result.best_score, finetune_history=result.history,
                              bn_recalibration_batches=result.bn_recalibration_batches)
        history.append(record)
        ctx.log(f"{ctx.name}: step {step}/{cfg.steps}: MACs {macs / pruner.base_macs:.1%} of the original, "
                f"val top-1 {record['top1_pruned']:.2f} pruned"
                + (f", {record['top1_finetuned']:.2f} fine-tuned" if "top1_finetuned" in record else ""))

    model.eval()
    reference = build_from_meta({**ctx.input.meta, "structure": {}})
    meta = {**ctx.input.meta, "structure": structure_of(model.cpu(), reference),
            "pruning": {"importance": cfg.importance, "allocation": cfg.allocation, "steps": cfg.steps,
                        "widths": layer_widths(model)}}
    artifact = save_stage_model(ctx, model, meta)
    last = history[-1]
    metrics.update(
        macs_before=pruner.base_macs, macs_after=artifact.meta["macs"], params_before=params_before,
        params_after=artifact.meta["params"], macs_reduction=round(1 - artifact.meta["macs"] / pruner.base_macs, 4),
        top1_pruned=last["top1_pruned"], top1_finetuned=last.get("top1_finetuned"),
        channels_kept=channels_kept(pruner.base_widths, layer_widths(model)),
        ignored=pruner.ignored, frozen=pruner.frozen, steps=history,
    )
    return StageOutput(artifact, metrics)
